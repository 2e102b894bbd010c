#!/bin/sh
# The compose stack's mosquitto-auth job (docker-compose.yml): runs once in the
# eclipse-mosquitto:2 image, as root, before mosquitto starts. It writes the broker's
# password file from the passwords in .env (mosquitto_passwd: hashed, never in clear) and
# installs the ACL, both readable only by the image's mosquitto user (uid 1883), in the
# mosquitto-auth volume that mosquitto.conf names. Users the file holds besides the
# stack's three (e.g. a site's gateway, added with mosquitto_passwd) are kept; the
# stack's own users get the passwords .env has now.
set -eu
out="${MOSQUITTO_AUTH_DIR:-/mosquitto/auth}"
acl="${MOSQUITTO_ACL:-/deploy/acl}"
owner="${MOSQUITTO_UID:-1883}"
umask 077
mkdir -p "$out"
if [ -f "$out/passwd" ]; then cp "$out/passwd" "$out/passwd.new"; else : > "$out/passwd.new"; fi
for role in ingest stream dashboard; do
  var="EMS_MQTT_$(echo "$role" | tr '[:lower:]' '[:upper:]')_PASSWORD"
  eval "pw=\${$var:-}"
  if [ -z "$pw" ]; then
    echo "mosquitto-auth: $var is not set: copy .env.example to .env and set it" >&2
    rm -f "$out/passwd.new"
    exit 1
  fi
  mosquitto_passwd -b "$out/passwd.new" "$role" "$pw"
done
cp "$acl" "$out/acl.new"
chown "$owner:$owner" "$out" "$out/passwd.new" "$out/acl.new"
chmod 0700 "$out"
chmod 0600 "$out/passwd.new" "$out/acl.new"
mv "$out/passwd.new" "$out/passwd"
mv "$out/acl.new" "$out/acl"
echo "mosquitto-auth: $out/passwd (users: ingest, stream, dashboard, and any added before) and $out/acl written"
