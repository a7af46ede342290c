# Paho (a third-party client) over TLS, WebSocket or secure WebSocket:
# connects, subscribes to TOPIC, publishes one QoS 1 message to it, prints
# the payload it gets back and exits 0; any failure exits non-zero.
# Usage: python3 paho_roundtrip.py PORT TOPIC [--ca F] [--cert F --key F]
#        [--ws PATH] [--v5]
import argparse
import sys
import threading

import paho.mqtt.client as mqtt

ap = argparse.ArgumentParser()
ap.add_argument("port", type=int)
ap.add_argument("topic")
ap.add_argument("--ca")
ap.add_argument("--cert")
ap.add_argument("--key")
ap.add_argument("--ws")
ap.add_argument("--v5", action="store_true")
a = ap.parse_args()

proto = mqtt.MQTTv5 if a.v5 else mqtt.MQTTv311
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-{a.topic.replace('/', '-')}",
                protocol=proto, transport="websockets" if a.ws else "tcp")
if a.ws:
    c.ws_set_options(path=a.ws)
if a.ca:
    c.tls_set(ca_certs=a.ca, certfile=a.cert, keyfile=a.key)
done = threading.Event()
got = []


def on_connect(client, userdata, flags, rc, props=None):
    if rc != 0:
        print(f"connect refused: {rc}", file=sys.stderr)
        sys.exit(2)
    client.subscribe(a.topic, qos=1)


def on_subscribe(client, userdata, mid, rcs, props=None):
    client.publish(a.topic, b"paho-roundtrip", qos=1)


def on_message(client, userdata, msg):
    got.append(msg.payload.decode())
    done.set()


c.on_connect = on_connect
c.on_subscribe = on_subscribe
c.on_message = on_message
c.connect("localhost", a.port, keepalive=30)
c.loop_start()
ok = done.wait(15)
c.disconnect()
c.loop_stop()
if not ok:
    print("no message back", file=sys.stderr)
    sys.exit(3)
print(got[0])
