/** Real TCP goodput through the shaped veth: a sender in the server namespace, a receiver per client. */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Topology } from './netns.js';

const PEER = fileURLToPath(new URL('../../daemon/demo/traffic-peer.mjs', import.meta.url));

export interface GoodputSpec {
  /** Client address (IPv4 or IPv6) the traffic goes to. */
  to: string;
  port?: number;
  seconds?: number;
  /** Excluded from the measurement: TCP ramp-up and the class's initial burst. */
  warmupSeconds?: number;
}

export interface Goodput {
  to: string;
  bitsPerSecond: number;
  bytes: number;
  seconds: number;
}

function inNamespace(netns: string, args: string[]): ChildProcess {
  return spawn('ip', ['netns', 'exec', netns, process.execPath, PEER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
}

function firstLine(child: ChildProcess, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout!.on('data', (data: Buffer) => {
      out += data.toString();
      const newline = out.indexOf('\n');
      if (newline >= 0) resolve(out.slice(0, newline));
    });
    child.stderr!.on('data', (data: Buffer) => (err += data.toString()));
    child.on('exit', (code) => reject(new Error(`${what} exited with ${code} before answering: ${err.trim()}`)));
  });
}

let nextPort = 46000;

/** Measures several flows at the same time (isolation, fair sharing), one result per spec. */
export async function measureGoodputConcurrently(topology: Topology, specs: GoodputSpec[]): Promise<Goodput[]> {
  const children: ChildProcess[] = [];
  try {
    const runs = await Promise.all(
      specs.map(async (spec) => {
        const port = spec.port ?? nextPort++;
        const seconds = spec.seconds ?? 4;
        const warmup = spec.warmupSeconds ?? 1;
        const receiver = inNamespace(topology.clientNs, ['receive', spec.to, String(port), String(warmup), String(seconds)]);
        children.push(receiver);
        const ready = firstLine(receiver, 'receiver');
        const listening = await ready;
        if (listening !== 'listening') throw new Error(`receiver said ${listening}`);
        const result = new Promise<string>((resolve, reject) => {
          let out = '';
          receiver.stdout!.removeAllListeners('data');
          receiver.stdout!.on('data', (data: Buffer) => (out += data.toString()));
          receiver.removeAllListeners('exit');
          receiver.on('exit', (code) => (code === 0 ? resolve(out.trim().split('\n').pop()!) : reject(new Error(`receiver for ${spec.to} exited with ${code}`))));
        });
        const sender = inNamespace(topology.serverNs, ['send', spec.to, String(port), String(warmup + seconds + 1)]);
        children.push(sender);
        const { bytes, seconds: measured } = JSON.parse(await result) as { bytes: number; seconds: number };
        return { to: spec.to, bytes, seconds: measured, bitsPerSecond: (bytes * 8) / measured };
      }),
    );
    return runs;
  } finally {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
  }
}

export async function measureGoodput(topology: Topology, spec: GoodputSpec): Promise<Goodput> {
  const [result] = await measureGoodputConcurrently(topology, [spec]);
  return result!;
}
