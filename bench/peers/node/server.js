// Node `ws` echo server for the chatgw bench.
//   PORT=0 HEARTBEAT_S=5 node server.js   -> prints "listening PORT"
// Echoes every message to its sender; a payload starting with "B" goes to every client.
'use strict';
const { WebSocketServer } = require('ws');

const port = parseInt(process.env.PORT || '0', 10);
const host = process.env.HOST || '127.0.0.1';
const heartbeat = parseFloat(process.env.HEARTBEAT_S || '0');

const wss = new WebSocketServer({ host, port, backlog: 4096 });

wss.on('connection', (ws) => {
  ws.isAlive = true;
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('message', (data, isBinary) => {
    if (data.length > 0 && data[0] === 66) { // 'B'
      for (const c of wss.clients) c.send(data, { binary: isBinary });
    } else {
      ws.send(data, { binary: isBinary });
    }
  });
  ws.on('error', () => {});
});

wss.on('listening', () => {
  process.stdout.write(`listening ${wss.address().port}\n`);
});

if (heartbeat > 0) {
  setInterval(() => {
    for (const ws of wss.clients) {
      if (!ws.isAlive) { ws.terminate(); continue; }
      ws.isAlive = false;
      ws.ping();
    }
  }, heartbeat * 1000);
}

const stop = () => { wss.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
