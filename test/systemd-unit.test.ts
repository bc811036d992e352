/**
 * examples/shaperrd.service starts the binary the README's host install puts there: the package packed
 * (`npm pack`) and installed globally under /usr/local, here under a throwaway root. systemd-analyze
 * verify, pointed at that root, then finds ExecStart and everything else the unit names; the same unit
 * with the old /usr/bin path fails there, so the check can fail.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const UNIT = readFileSync(join(REPO, 'examples/shaperrd.service'), 'utf8');
const PREFIX = '/usr/local'; // the README's `npm install -g --prefix /usr/local …`
const hasSystemd = spawnSync('systemd-analyze', ['--version']).status === 0;

const setting = (unit: string, key: string): string => {
  const value = new RegExp(`^${key}=(.*)$`, 'm').exec(unit)?.[1];
  if (value === undefined) throw new Error(`the unit has no ${key}=`);
  return value;
};

/** systemd-analyze verify of `unit` installed under `root`; its complaints, or '' when it passes. */
function verify(root: string, unit: string): string {
  writeFileSync(join(root, 'etc/systemd/system/shaperrd.service'), unit);
  const run = spawnSync('systemd-analyze', ['verify', `--root=${root}`, '/etc/systemd/system/shaperrd.service'], { encoding: 'utf8' });
  return run.status === 0 ? '' : `${run.stderr}${run.stdout}`.trim() || `exit ${run.status}`;
}

t.test('the unit starts the shaperrd that the README install puts in /usr/local/bin', { skip: hasSystemd ? false : 'no systemd-analyze' }, async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'shaperr-unit-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  const root = join(work, 'root');
  const packed = execFileSync('npm', ['pack', '--silent', '--pack-destination', work], { cwd: REPO, encoding: 'utf8' }).trim().split('\n').pop()!;
  execFileSync('npm', ['install', '--global', '--silent', '--prefix', join(root, PREFIX), join(work, packed)], { cwd: work, stdio: 'ignore' });

  const execStart = setting(UNIT, 'ExecStart').split(' ')[0]!;
  t.equal(execStart, `${PREFIX}/bin/shaperrd`, 'ExecStart is the global install’s bin');
  const installed = join(root, execStart);
  t.ok(statSync(installed).mode & 0o111, `${execStart} exists in the installed root and is executable`);
  t.equal(realpathSync(installed), realpathSync(join(root, PREFIX, 'lib/node_modules/shaperr/dist/daemon/cli.js')), 'it is the package’s shaperrd');
  const help = spawnSync(installed, ['--help'], { encoding: 'utf8' });
  t.equal(help.status, 0, 'the installed shaperrd runs (--help)');
  t.match(help.stdout, /Usage: shaperrd/);

  const documentation = setting(UNIT, 'Documentation');
  t.match(documentation, /^file:\//, 'Documentation= names a file that ships with the package, not a web address');
  t.ok(statSync(join(root, documentation.replace(/^file:/, ''))).isFile(), `${documentation} exists after the install`);

  // What verify needs besides the package: the units it pulls in and the ExecReload command.
  mkdirSync(join(root, 'etc/systemd/system'), { recursive: true });
  mkdirSync(join(root, 'usr/lib/systemd'), { recursive: true });
  cpSync('/usr/lib/systemd/system', join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
  mkdirSync(join(root, 'bin'), { recursive: true });
  cpSync(realpathSync(setting(UNIT, 'ExecReload').split(' ')[0]!), join(root, 'bin/kill'));

  t.equal(verify(root, UNIT), '', 'systemd-analyze verify passes on the installed root');
  t.match(
    verify(root, UNIT.replace(`ExecStart=${execStart}`, 'ExecStart=/usr/bin/shaperrd')),
    /\/usr\/bin\/shaperrd is not executable/,
    'the old /usr/bin path fails the same check',
  );
});
