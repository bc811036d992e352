// Runs test files inside the lane, two at a time, each as `node --import tsx FILE` (a tap test file is its own
// program and prints TAP). Under emulation tap's runner and its TypeScript loader cost about twice what the tests
// themselves do (sfq.test.ts: 209 s through tap, 76 s this way), so the lane skips them. Prints each file's
// output indented under "ok N - FILE" or "not ok N - FILE" (exit status 0 and no failing assertion), then a
// summary, and exits 1 if any file failed.
//   node run-files.mjs <timeoutSeconds> FILE...
import { spawn } from 'node:child_process';

const [timeoutText, ...files] = process.argv.slice(2);
const timeoutMs = Number(timeoutText) * 1000;
const JOBS = 2;

// Node itself crashing under qemu's emulated CPU (seen once in many lane runs: sfq.test.ts killed by SIGSEGV
// 17 s in, then 8 clean runs in a row). A file that dies so is run once more, and says so; a failed
// assertion, an exit code or a second crash still fail it.
const EMULATOR_CRASHES = new Set(['SIGSEGV', 'SIGBUS', 'SIGILL']);

async function runFile(file) {
  const first = await runFileOnce(file);
  if (!EMULATOR_CRASHES.has(first.signal)) return first;
  const again = await runFileOnce(file);
  return { ...again, output: `# the first run was killed by ${first.signal} after ${first.seconds.toFixed(0)} s: run again\n${again.output}` };
}

function runFileOnce(file) {
  return new Promise((resolve) => {
    const started = performance.now();
    // TAP_TIMEOUT: a file run on its own gives each test 30 s unless told otherwise, as tap's runner does.
    const child = spawn(process.execPath, ['--import', 'tsx', file], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TAP_TIMEOUT: timeoutText } });
    let output = '';
    child.stdout.on('data', (data) => (output += data));
    child.stderr.on('data', (data) => (output += data));
    const timer = setTimeout(() => {
      output += `\n# killed after ${timeoutMs / 1000} s\n`;
      child.kill('SIGKILL');
    }, timeoutMs + 10_000);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const failed = code !== 0 || /^\s*not ok /m.test(output);
      resolve({ file, output, failed, signal, how: signal ? `killed by ${signal}` : `exit ${code}`, seconds: (performance.now() - started) / 1000 });
    });
  });
}

const queue = files.map((file, index) => ({ file, index }));
const results = new Array(files.length);
let next = 0;
const printed = { upTo: 0 };
// Results are printed in file order as they complete, so a slow first file does not hide the others' output.
function printReady() {
  while (printed.upTo < results.length && results[printed.upTo]) {
    const { file, output, failed, how, seconds } = results[printed.upTo];
    process.stdout.write(`# Subtest: ${file}\n${output.replace(/^/gm, '    ')}\n`);
    process.stdout.write(`${failed ? 'not ok' : 'ok'} ${printed.upTo + 1} - ${file} # time=${(seconds * 1000).toFixed(0)}ms${failed ? ` (${how})` : ''}\n`);
    printed.upTo++;
  }
}
async function worker() {
  while (next < queue.length) {
    const { file, index } = queue[next++];
    results[index] = await runFile(file);
    printReady();
  }
}
await Promise.all(Array.from({ length: Math.min(JOBS, files.length) }, worker));
const failed = results.filter((result) => result.failed).length;
process.stdout.write(`1..${files.length}\n# { total: ${files.length}, pass: ${files.length - failed}, fail: ${failed} }\n`);
process.exit(failed ? 1 : 0);
