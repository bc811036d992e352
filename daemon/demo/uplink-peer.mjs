// The home-uplink processes, run with plain `node` inside a namespace (no TS loader). Times are ms on
// CLOCK_MONOTONIC (process.hrtime), which every process on the machine shares, so the parent can line
// them up with its own samples.
//   node uplink-peer.mjs segments <address> <port>
//     a Plex-like segment server: each line "<bytes>\n" received on a connection is answered with that
//     many bytes, written at once (a transcoder's finished segment leaves at full wire speed).
//   node uplink-peer.mjs players <server> <port> <seconds> <streams-json>
//     remote video players, one connection each, bound to its own address: streams-json is
//     [{"address":…,"bitsPerSecond":…}]. Each fetches 4-second segments whenever its buffer holds less
//     than 30 s, starting empty; playback starts once the first segment is in; a stall is the buffer
//     running dry while playing. Prints "segment <stream> <requested> <done> <late>" per segment,
//     "status <time> <buffers-json>" every second, and "summary <json>" at the end (or on SIGTERM).
//   node uplink-peer.mjs udp-echo <address> <port>
//     a game server: every datagram goes straight back.
//   node uplink-peer.mjs gamer <address> <server> <port> <seconds> <packetsPerSecond>
//     a player's game client: small datagrams at a steady rate; prints "rtt <seq> <ms> <sent>" per answer and
//     "done <sent> <answered>" at the end.
//   node uplink-peer.mjs sink <address> <port>
//     where LAN uploads go: reads and discards TCP connections and UDP datagrams on the one port.
//   node uplink-peer.mjs upload <address> <sink> <port> tcp|udp <bitsPerSecond>
//     a LAN uploader from <address>: paced at <bitsPerSecond> of payload (a video call over UDP in
//     1200-byte datagrams, a capped backup over TCP), or with 0 (TCP only) bulk, as fast as TCP goes.
//     Prints "started" once it can send, "sent <time> <bytes>" every 200 ms (payload handed to the
//     kernel so far) and, on SIGTERM, "done <bytes> <seconds>".
import dgram from 'node:dgram';
import net from 'node:net';

const [mode, ...args] = process.argv.slice(2);
const now = () => Number(process.hrtime.bigint()) / 1e6;
const say = (line) => process.stdout.write(`${line}\n`);

const SEGMENT_SECONDS = 4;
const BUFFER_TARGET_SECONDS = 30;
const DATAGRAM_BYTES = 1200;
const TCP_CHUNK_BYTES = 64 * 1024;
const PACING_TICK_MS = 5;
/** The most a paced uploader sends at once after falling behind (a late timer): 100 ms of its rate. */
const PACING_BURST_MS = 100;

if (mode === 'segments') {
  const [address, port] = args;
  let payload = Buffer.alloc(0);
  const server = net.createServer((socket) => {
    let pending = '';
    socket.on('data', (data) => {
      pending += data.toString();
      for (let newline = pending.indexOf('\n'); newline >= 0; newline = pending.indexOf('\n')) {
        const bytes = Number(pending.slice(0, newline));
        pending = pending.slice(newline + 1);
        if (payload.length < bytes) payload = Buffer.alloc(bytes, 0x5a);
        socket.write(payload.subarray(0, bytes));
      }
    });
    socket.on('error', () => {});
  });
  server.listen(Number(port), address, () => say('listening'));
} else if (mode === 'players') {
  const [server, port, seconds, streamsJson] = args;
  const began = now();
  const players = JSON.parse(streamsJson).map((stream, index) => startPlayer(index, stream, server, Number(port)));
  const finish = () => {
    const at = now();
    say(`summary ${JSON.stringify({ seconds: (at - began) / 1000, streams: players.map((player) => player.result(at)) })}`);
    process.exit(0);
  };
  setInterval(() => say(`status ${now()} ${JSON.stringify(players.map((player) => player.status(now())))}`), 1000);
  setTimeout(finish, Number(seconds) * 1000);
  process.on('SIGTERM', finish);
} else if (mode === 'udp-echo') {
  const [address, port] = args;
  const socket = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
  socket.on('message', (message, from) => socket.send(message, from.port, from.address));
  socket.bind(Number(port), address, () => say('listening'));
} else if (mode === 'gamer') {
  const [address, server, port, seconds, perSecond] = args;
  const socket = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
  const sentAt = new Map();
  let sent = 0;
  let answered = 0;
  socket.on('message', (message) => {
    const seq = message.readUInt32BE(0);
    const at = sentAt.get(seq);
    if (at === undefined) return;
    sentAt.delete(seq);
    answered++;
    say(`rtt ${seq} ${(now() - at).toFixed(3)} ${at.toFixed(3)}`);
  });
  socket.bind(0, address, () => {
    // A game's input/state packet: ~100 bytes.
    const packet = Buffer.alloc(100, 0x47);
    const interval = 1000 / Number(perSecond);
    const began = now();
    const send = () => {
      if (now() - began >= Number(seconds) * 1000) {
        // Answers still in flight get up to a second (one full modem buffer) before they count as lost.
        setTimeout(() => {
          say(`done ${sent} ${answered}`);
          process.exit(0);
        }, 1000);
        return;
      }
      packet.writeUInt32BE(sent, 0);
      sentAt.set(sent, now());
      socket.send(packet, Number(port), server);
      sent++;
      // Scheduled against the start, so a late timer does not slow the rate down.
      setTimeout(send, Math.max(0, began + sent * interval - now()));
    };
    send();
  });
} else if (mode === 'sink') {
  const [address, port] = args;
  const udp = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
  const tcp = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.resume();
  });
  udp.bind(Number(port), address, () => tcp.listen(Number(port), address, () => say('listening')));
} else if (mode === 'upload') {
  const [address, sink, port, protocol, bitsPerSecond] = args;
  startUploader(address, sink, Number(port), protocol, Number(bitsPerSecond));
} else {
  process.stderr.write('usage: uplink-peer.mjs segments|players|udp-echo|gamer|sink|upload …\n');
  process.exit(64);
}

/** One remote player: its buffer model, fetch loop and counters. */
function startPlayer(index, { address, bitsPerSecond }, server, port) {
  const segmentBytes = Math.round((bitsPerSecond * SEGMENT_SECONDS) / 8);
  const requestedAt = now();
  let contentSeconds = 0; // downloaded
  let playingSince; // when playback started
  let stalledMs = 0; // total time the buffer was dry while playing
  let lateSegments = 0;
  let segments = 0;
  let bytes = 0;
  let fetchStartedAt;
  let received = 0;
  // Buffer in seconds (negative: dry for that long); before playback starts it only grows.
  const buffer = (at) => (playingSince === undefined ? contentSeconds : contentSeconds - (at - playingSince - stalledMs) / 1000);
  const socket = net.connect({ host: server, port, localAddress: address, noDelay: true });
  const fetch = () => {
    fetchStartedAt = now();
    received = 0;
    socket.write(`${segmentBytes}\n`);
  };
  socket.on('connect', fetch);
  socket.on('data', (data) => {
    received += data.length;
    bytes += data.length;
    if (received < segmentBytes) return;
    const at = now();
    const before = buffer(at);
    const late = playingSince !== undefined && before < 0;
    if (late) {
      lateSegments++;
      stalledMs += -before * 1000;
    }
    contentSeconds += SEGMENT_SECONDS;
    segments++;
    if (playingSince === undefined) playingSince = at;
    say(`segment ${index} ${fetchStartedAt.toFixed(3)} ${at.toFixed(3)} ${late ? 1 : 0}`);
    fetchStartedAt = undefined;
    const wait = (buffer(at) - BUFFER_TARGET_SECONDS) * 1000;
    if (wait <= 0) fetch();
    else setTimeout(fetch, wait);
  });
  socket.on('error', (error) => {
    process.stderr.write(`player ${index} (${address}): ${error.message}\n`);
    process.exit(1);
  });
  return {
    status: (at) => ({
      buffer: Number(Math.max(0, buffer(at)).toFixed(2)),
      stalls: lateSegments + (buffer(at) < 0 ? 1 : 0),
      fetching: fetchStartedAt !== undefined,
    }),
    result: (at) => {
      const dryNow = playingSince !== undefined && buffer(at) < 0;
      return {
        address,
        bitsPerSecond,
        segments,
        lateSegments,
        // A stall still under way at the end counts too.
        stalls: lateSegments + (dryNow ? 1 : 0),
        stalledSeconds: (stalledMs + (dryNow ? -buffer(at) * 1000 : 0)) / 1000,
        startupSeconds: playingSince === undefined ? null : (playingSince - requestedAt) / 1000,
        bytes,
        goodputBitsPerSecond: (bytes * 8 * 1000) / (at - requestedAt),
      };
    },
  };
}

/** One LAN uploader (see the usage above). */
function startUploader(address, sink, port, protocol, bitsPerSecond) {
  if (!(protocol === 'tcp' || protocol === 'udp') || !(bitsPerSecond >= 0) || (protocol === 'udp' && !bitsPerSecond)) {
    process.stderr.write(`upload: expected tcp or udp and a rate in bits/s (0: bulk, TCP only), got ${protocol} ${bitsPerSecond}\n`);
    process.exit(64);
  }
  const began = now();
  const fail = (error) => {
    process.stderr.write(`upload from ${address} to ${sink}:${port}: ${error.message}\n`);
    process.exit(1);
  };
  const connect = protocol === 'udp' ? udpSender : tcpSender;
  connect(address, sink, port, fail, (sender) => {
    say('started');
    setInterval(() => say(`sent ${now().toFixed(3)} ${sender.sent()}`), 200);
    process.on('SIGTERM', () => {
      say(`done ${sender.sent()} ${((now() - began) / 1000).toFixed(3)}`);
      process.exit(0);
    });
    if (bitsPerSecond) pace(sender, bitsPerSecond);
    else sender.bulk();
  });
}

/** A token bucket filled at the rate on a timer; the sender spends what it can of it. */
function pace(sender, bitsPerSecond) {
  const bytesPerMs = bitsPerSecond / 8 / 1000;
  let tokens = 0;
  let last = now();
  setInterval(() => {
    const at = now();
    tokens = Math.min(tokens + (at - last) * bytesPerMs, PACING_BURST_MS * bytesPerMs);
    last = at;
    tokens -= sender.send(tokens);
  }, PACING_TICK_MS);
}

/** UDP: whole datagrams out of the budget, the rest waits for the next tick. */
function udpSender(address, sink, port, fail, ready) {
  const socket = dgram.createSocket(address.includes(':') ? 'udp6' : 'udp4');
  const datagram = Buffer.alloc(DATAGRAM_BYTES, 0x55);
  let sent = 0;
  const counted = (error) => {
    if (!error) sent += DATAGRAM_BYTES;
  };
  socket.on('error', fail);
  socket.bind(0, address, () =>
    socket.connect(port, sink, () =>
      ready({
        sent: () => sent,
        send(budget) {
          const count = Math.floor(budget / DATAGRAM_BYTES);
          for (let i = 0; i < count; i++) socket.send(datagram, counted);
          return count * DATAGRAM_BYTES;
        },
      }),
    ),
  );
}

/** TCP: paced writes while Node holds nothing unsent (else the path is slower than the cap), or bulk. */
function tcpSender(address, sink, port, fail, ready) {
  const socket = net.connect({ host: sink, port, localAddress: address });
  const chunk = Buffer.alloc(TCP_CHUNK_BYTES, 0x55);
  socket.on('error', fail);
  socket.on('connect', () =>
    ready({
      // Bytes still in Node's own buffer have not reached the kernel.
      sent: () => socket.bytesWritten - socket.writableLength,
      send(budget) {
        const bytes = Math.min(Math.floor(budget), TCP_CHUNK_BYTES);
        if (socket.writableLength > 0 || bytes < 1) return 0;
        socket.write(chunk.subarray(0, bytes));
        return bytes;
      },
      bulk() {
        const fill = () => {
          while (socket.write(chunk));
        };
        socket.on('drain', fill);
        fill();
      },
    }),
  );
}
