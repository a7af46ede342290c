"""Paho (a third-party client) connects with a user name and password and
prints the CONNACK code it got: 3.1.1's return code (0..5) or 5.0's reason
code (0, 0x86 = 134, 0x87 = 135, ...), or "timeout".
Usage: python3 auth_paho.py PORT VERSION(311|5) CLIENT_ID USER PASSWORD"""
import sys
import threading

import paho.mqtt.client as mqtt

port, version, client_id, user, password = sys.argv[1:6]
done = threading.Event()
result = {}

if version == "311":
    # VERSION1 callbacks hand 3.1.1's return code over as it came.
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=client_id, protocol=mqtt.MQTTv311)

    def on_connect(client, userdata, flags, rc):
        result["code"] = rc
        done.set()
else:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)

    def on_connect(client, userdata, flags, reason, props):
        result["code"] = reason.value
        done.set()

client.on_connect = on_connect
client.username_pw_set(user, password)
client.connect("127.0.0.1", int(port))
client.loop_start()
done.wait(10)
client.loop_stop()
print(result.get("code", "timeout"), flush=True)
