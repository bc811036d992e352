// TCP peer for goodput tests, run inside a namespace with plain `node` (no TS loader).
//   node traffic-peer.mjs receive <address> <port> <warmupSeconds> <seconds>
//     listens, counts payload bytes from the first byte on, prints {"bytes":…,"seconds":…} for the window
//     [warmup, warmup + seconds] and exits.
//   node traffic-peer.mjs send <address> <port> <totalSeconds>
//     connects and writes as fast as the socket accepts for totalSeconds.
//   node traffic-peer.mjs sink <address> <port>
//     listens and prints the running byte count ("bytes N") every 250 ms, until killed.
import net from 'node:net';

const [mode, address, portText, ...rest] = process.argv.slice(2);
const port = Number(portText);

if (mode === 'receive') {
  const [warmup, seconds] = rest.map(Number);
  let total = 0;
  const server = net.createServer((socket) => {
    socket.on('data', (chunk) => {
      if (total === 0) startWindow();
      total += chunk.length;
    });
    socket.on('error', () => {});
  });
  let started = false;
  const startWindow = () => {
    if (started) return;
    started = true;
    setTimeout(() => {
      const from = total;
      const at = process.hrtime.bigint();
      setTimeout(() => {
        const elapsed = Number(process.hrtime.bigint() - at) / 1e9;
        process.stdout.write(JSON.stringify({ bytes: total - from, seconds: elapsed }) + '\n');
        process.exit(0);
      }, seconds * 1000);
    }, warmup * 1000);
  };
  server.listen(port, address, () => process.stdout.write('listening\n'));
  setTimeout(() => {
    process.stderr.write('receiver: no data arrived\n');
    process.exit(2);
  }, (warmup + seconds + 20) * 1000).unref();
} else if (mode === 'sink') {
  let total = 0;
  const server = net.createServer((socket) => {
    socket.on('data', (chunk) => (total += chunk.length));
    socket.on('error', () => {});
  });
  server.listen(port, address, () => process.stdout.write('listening\n'));
  setInterval(() => process.stdout.write(`bytes ${total}\n`), 250);
} else if (mode === 'send') {
  const [totalSeconds] = rest.map(Number);
  const chunk = Buffer.alloc(64 * 1024, 0x5a);
  const socket = net.connect({ host: address, port }, () => {
    const pump = () => {
      while (socket.write(chunk)) {
        /* keep the socket buffer full */
      }
    };
    socket.on('drain', pump);
    pump();
  });
  socket.on('error', (error) => {
    process.stderr.write(`sender: ${error.message}\n`);
    process.exit(1);
  });
  setTimeout(() => {
    socket.destroy();
    process.exit(0);
  }, totalSeconds * 1000);
} else {
  process.stderr.write('usage: traffic-peer.mjs receive|send …\n');
  process.exit(64);
}
