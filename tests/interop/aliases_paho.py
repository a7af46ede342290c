"""Paho (a third-party client) as a 5.0 subscriber: prints one JSON line per
message (topic, payload, the Topic Alias property if any) and exits after
COUNT messages. Paho does not resolve incoming aliases itself, so it asks
for none unless ALIAS_MAX > 0.
Usage: python3 aliases_paho.py PORT CLIENT_ID FILTER COUNT ALIAS_MAX"""
import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

port, client_id, flt, count, alias_max = sys.argv[1:6]
left = int(count)
done = threading.Event()


def on_connect(client, userdata, flags, reason, props):
    client.subscribe(flt, qos=1)


def on_subscribe(client, userdata, mid, reasons, props):
    print("READY", flush=True)


def on_message(client, userdata, msg):
    global left
    alias = getattr(msg.properties, "TopicAlias", None) if msg.properties else None
    print(json.dumps({"topic": msg.topic, "payload": msg.payload.decode(), "alias": alias}), flush=True)
    left -= 1
    if left == 0:
        done.set()


c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
props = None
if int(alias_max) > 0:
    props = Properties(PacketTypes.CONNECT)
    props.TopicAliasMaximum = int(alias_max)
c.connect("127.0.0.1", int(port), properties=props)
c.loop_start()
ok = done.wait(30)
c.disconnect()
c.loop_stop()
sys.exit(0 if ok else 4)
