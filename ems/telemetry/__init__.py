"""MQTT telemetry: the v1 contract (``docs/telemetry.md``), publisher, ingestor, brokers.

Modules: :mod:`~ems.telemetry.topics` and :mod:`~ems.telemetry.codec` (pure),
:mod:`~ems.telemetry.connection` (paho clients), :mod:`~ems.telemetry.publisher`,
:mod:`~ems.telemetry.ingestor`, :mod:`~ems.telemetry.ledger` (ledger, checkpoint,
reconciliation), :mod:`~ems.telemetry.backfill` (high-water marks and backfill requests:
recovery of what a broker acknowledged and lost), :mod:`~ems.telemetry.broker` (embedded
amqtt broker).
"""
