"""Paho (a third-party client) against the reference ACL, as device devB:
5.0 SUBSCRIBE to A's and its own command topic, 5.0 PUBLISH QoS 1 on A's
command topic, then a 3.1.1 CONNECT with a will on A's command topic.
Prints one JSON line with the reason codes seen.
Usage: python3 acl_paho.py PORT"""
import json
import sys
import threading

import paho.mqtt.client as mqtt

port = int(sys.argv[1])
seen = {}
step = threading.Event()


def on_connect(client, userdata, flags, reason, props):
    seen.setdefault("connack", []).append(reason.value)
    step.set()


def on_subscribe(client, userdata, mid, reasons, props):
    seen["suback"] = [r.value for r in reasons]
    step.set()


def on_publish(client, userdata, mid, reason, props):
    seen["puback"] = reason.value
    step.set()


def wait(what):
    if not step.wait(10):
        print(json.dumps({"timeout": what, **seen}), flush=True)
        sys.exit(4)
    step.clear()


c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="devB-paho", protocol=mqtt.MQTTv5)
c.username_pw_set("devB", "")
c.on_connect, c.on_subscribe, c.on_publish = on_connect, on_subscribe, on_publish
c.connect("127.0.0.1", port)
c.loop_start()
wait("connack")
c.subscribe([("devices/+/commands", 1), ("devices/devB/commands", 1)])
wait("suback")
c.publish("devices/devA/commands", b"forged", qos=1, retain=True)
wait("puback")
c.disconnect()
c.loop_stop()

w = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="devB-will", protocol=mqtt.MQTTv311)
w.username_pw_set("devB", "")
w.will_set("devices/devA/commands", b"x", qos=1)
w.on_connect = on_connect
w.connect("127.0.0.1", port)
w.loop_start()
wait("will connack")
w.loop_stop()
print(json.dumps(seen), flush=True)
