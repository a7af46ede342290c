// MQTT.js (a third-party client) as a 5.0 subscriber that allows topic
// aliases: prints one JSON line per message (topic as MQTT.js resolved it,
// the alias it carried) and exits after `count` messages.
// Usage: node aliases.js PORT CLIENT_ID FILTER COUNT ALIAS_MAX
const mqtt = require('mqtt');
const [port, clientId, filter, count, aliasMax] = process.argv.slice(2);
const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
  clientId,
  protocolVersion: 5,
  clean: true,
  reconnectPeriod: 0,
  properties: { topicAliasMaximum: Number(aliasMax) },
});
let left = Number(count);
client.on('connect', () => {
  client.subscribe(filter, { qos: 1 }, (err) => {
    if (err) { console.error(err); process.exit(2); }
    console.log('READY');
  });
});
client.on('message', (topic, payload, packet) => {
  const alias = packet.properties && packet.properties.topicAlias;
  console.log(JSON.stringify({ topic, payload: payload.toString(), alias: alias ?? null }));
  if (--left === 0) client.end(false, {}, () => process.exit(0));
});
client.on('error', (e) => { console.error(`error: ${e.message}`); process.exit(3); });
setTimeout(() => { console.error('timeout'); process.exit(4); }, 30000);
