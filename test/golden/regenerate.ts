/**
 * Captures tc's bytes for the golden cases into vectors.json: `npx tsx test/golden/regenerate.ts` (root).
 * Vectors whose command is unchanged are kept as they are (a diff shows only new or changed cases);
 * `--all` captures every case again.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { toTcCommand } from '../../lib/tc/objects.js';
import { captureTcRequests, GOLDEN_DEVICE, tcVersion, toolsAvailable, withGoldenNetns } from './capture.js';
import { goldenCases } from './cases.js';

export interface GoldenVectors {
  iproute2: string;
  psched: string;
  generatedBy: string;
  cases: Array<{ name: string; command: string; ifindex: number; requests: string[]; tcExitCode: number; tcSaid?: string }>;
}

const unavailable = toolsAvailable();
if (unavailable) {
  process.stderr.write(`cannot regenerate: ${unavailable}\n`);
  process.exit(1);
}
const vectorsFile = new URL('./vectors.json', import.meta.url);
const previous = process.argv.includes('--all') ? undefined : (JSON.parse(readFileSync(vectorsFile, 'utf8')) as GoldenVectors);
if (previous && previous.iproute2 !== tcVersion()) {
  process.stderr.write(`the vectors come from iproute2 ${previous.iproute2}, this tc is ${tcVersion()}: capture all with --all\n`);
  process.exit(1);
}
const vectors: GoldenVectors = {
  iproute2: previous?.iproute2 ?? tcVersion(),
  psched: previous?.psched ?? readFileSync('/proc/net/psched', 'utf8').trim(),
  generatedBy: 'test/golden/regenerate.ts',
  cases: [],
};
await withGoldenNetns(async ({ netns, ifindex }) => {
  for (const golden of goldenCases) {
    const command = toTcCommand(GOLDEN_DEVICE, golden.operation);
    const kept = previous?.cases.find((entry) => entry.name === golden.name && entry.command === command);
    if (kept) {
      vectors.cases.push(kept);
      continue;
    }
    const capture = captureTcRequests(netns, command.split(' ').slice(1));
    if (capture.requests.length === 0) throw new Error(`tc sent no request for: ${command}\n${capture.stderr}`);
    const entry: GoldenVectors['cases'][number] = {
      name: golden.name,
      command,
      ifindex,
      requests: capture.requests.map((r) => r.toString('hex')),
      tcExitCode: capture.exitCode,
    };
    if (capture.exitCode !== 0) entry.tcSaid = capture.stderr.split('\n')[0];
    vectors.cases.push(entry);
  }
});
writeFileSync(vectorsFile, `${JSON.stringify(vectors, null, 1)}\n`);
process.stdout.write(`wrote ${vectors.cases.length} cases (iproute2 ${vectors.iproute2})\n`);
