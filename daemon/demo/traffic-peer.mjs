// TCP peer for goodput tests, run inside a namespace with plain `node` (no TS loader).
//   node traffic-peer.mjs receive <address> <port> <warmupSeconds> <seconds>
//     listens, counts payload bytes from the first byte on, prints {"bytes":…,"seconds":…,"connections":[…]}
//     for the window [warmup, warmup + seconds] (connections: each connection's bytes, in order of arrival)
//     and exits.
//   node traffic-peer.mjs send <address> <port> <totalSeconds> [bitsPerSecond] [localPort]
//     connects (from localPort if given) and writes as fast as the socket accepts (or paced at
//     bitsPerSecond; 0: unpaced) for totalSeconds.
//   node traffic-peer.mjs sink <address> <port>
//     listens and prints the running byte count and when it was taken, in ms on its own monotonic clock
//     ("bytes N at T"), every 250 ms until killed: rates from these do not depend on when they are read.
//   node traffic-peer.mjs echo <address> <port>
//     listens and sends every byte back, until killed.
//   node traffic-peer.mjs pingpong <address> <port> <seconds>
//     one byte there and back, again and again (TCP_RR-style); prints {"roundTrips":…,"seconds":…}.
import net from 'node:net';

const [mode, address, portText, ...rest] = process.argv.slice(2);
const port = Number(portText);

if (mode === 'receive') {
  const [warmup, seconds] = rest.map(Number);
  let total = 0;
  const connections = [];
  const server = net.createServer((socket) => {
    const connection = { bytes: 0 };
    connections.push(connection);
    socket.on('data', (chunk) => {
      if (total === 0) startWindow();
      total += chunk.length;
      connection.bytes += chunk.length;
    });
    socket.on('error', () => {});
  });
  let started = false;
  const startWindow = () => {
    if (started) return;
    started = true;
    setTimeout(() => {
      const from = total;
      const fromEach = connections.map((connection) => connection.bytes);
      const at = process.hrtime.bigint();
      setTimeout(() => {
        const elapsed = Number(process.hrtime.bigint() - at) / 1e9;
        const each = connections.map((connection, i) => connection.bytes - (fromEach[i] ?? 0));
        process.stdout.write(`${JSON.stringify({ bytes: total - from, seconds: elapsed, connections: each })}\n`);
        process.exit(0);
      }, seconds * 1000);
    }, warmup * 1000);
  };
  server.listen(port, address, () => process.stdout.write('listening\n'));
  setTimeout(
    () => {
      process.stderr.write('receiver: no data arrived\n');
      process.exit(2);
    },
    (warmup + seconds + 20) * 1000,
  ).unref();
} else if (mode === 'sink') {
  let total = 0;
  const server = net.createServer((socket) => {
    socket.on('data', (chunk) => (total += chunk.length));
    socket.on('error', () => {});
  });
  server.listen(port, address, () => process.stdout.write('listening\n'));
  const began = process.hrtime.bigint();
  setInterval(() => process.stdout.write(`bytes ${total} at ${Number(process.hrtime.bigint() - began) / 1e6}\n`), 250);
} else if (mode === 'send') {
  const [totalSeconds, bitsPerSecond, localPort] = rest.map(Number);
  const chunk = Buffer.alloc(64 * 1024, 0x5a);
  const socket = net.connect({ host: address, port, ...(localPort > 0 ? { localPort } : {}) }, () => {
    if (bitsPerSecond > 0) {
      // Paced: a 64 KiB chunk whenever the average would otherwise fall behind the rate.
      const began = process.hrtime.bigint();
      let sent = 0;
      setInterval(() => {
        const due = (Number(process.hrtime.bigint() - began) / 1e9) * (bitsPerSecond / 8);
        // Never queue more than a few MiB in user space if the network falls behind.
        while (sent < due && socket.writableLength < 4 << 20) {
          socket.write(chunk);
          sent += chunk.length;
        }
      }, 10);
      return;
    }
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
} else if (mode === 'echo') {
  const server = net.createServer((socket) => {
    socket.setNoDelay(true);
    socket.on('data', (chunk) => socket.write(chunk));
    socket.on('error', () => {});
  });
  server.listen(port, address, () => process.stdout.write('listening\n'));
} else if (mode === 'pingpong') {
  const [seconds] = rest.map(Number);
  const byte = Buffer.from([0x5a]);
  let roundTrips = 0;
  const socket = net.connect({ host: address, port, noDelay: true }, () => {
    const began = process.hrtime.bigint();
    const until = began + BigInt(Math.round(seconds * 1e9));
    socket.on('data', () => {
      roundTrips++;
      const now = process.hrtime.bigint();
      if (now < until) return socket.write(byte);
      process.stdout.write(`${JSON.stringify({ roundTrips, seconds: Number(now - began) / 1e9 })}\n`);
      process.exit(0);
    });
    socket.write(byte);
  });
  socket.on('error', (error) => {
    process.stderr.write(`pingpong: ${error.message}\n`);
    process.exit(1);
  });
} else {
  process.stderr.write('usage: traffic-peer.mjs receive|send|sink|echo|pingpong …\n');
  process.exit(64);
}
