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
import dgram from 'node:dgram';
import net from 'node:net';

const [mode, ...args] = process.argv.slice(2);
const now = () => Number(process.hrtime.bigint()) / 1e6;
const say = (line) => process.stdout.write(`${line}\n`);

const SEGMENT_SECONDS = 4;
const BUFFER_TARGET_SECONDS = 30;

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
} else {
  process.stderr.write('usage: uplink-peer.mjs segments|players|udp-echo|gamer …\n');
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
