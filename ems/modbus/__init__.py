"""Modbus TCP: ems's meters as Modbus devices (``ems modbus``) and a gateway that polls
Modbus meters and publishes the readings contract (``ems gateway``); see ``docs/telemetry.md``.

Needs the ``plant`` extra: ``pip install 'ems[plant]'``.
"""
