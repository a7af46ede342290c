// MQTT.js (a third-party client) over WebSocket or secure WebSocket:
// connects to URL, subscribes to TOPIC, publishes one QoS 1 message to it,
// prints the payload it gets back and exits 0; any failure exits non-zero.
// Usage: node ws_roundtrip.js URL TOPIC VERSION [CA_FILE]
const fs = require('fs');
const mqtt = require('mqtt');
const [url, topic, version, caFile] = process.argv.slice(2);
const options = {
  clientId: `mqttjs-${topic.replace(/\//g, '-')}`,
  protocolVersion: Number(version),
  clean: true,
  reconnectPeriod: 0,
  connectTimeout: 10000,
};
if (caFile) options.ca = fs.readFileSync(caFile);
const client = mqtt.connect(url, options);
client.on('connect', () => {
  client.subscribe(topic, { qos: 1 }, (err) => {
    if (err) { console.error(err); process.exit(2); }
    client.publish(topic, 'mqttjs-roundtrip', { qos: 1 });
  });
});
let ending = false;
client.on('message', (t, payload) => {
  console.log(payload.toString());
  // The gateway closes the socket on DISCONNECT; a write racing with that
  // (the PUBACK) may fail with EPIPE once we are done.
  ending = true;
  client.end(false, {}, () => process.exit(0));
});
client.on('error', (e) => {
  if (ending) return;
  console.error(`error: ${e.message}`);
  process.exit(3);
});
setTimeout(() => { console.error('timeout'); process.exit(4); }, 20000);
