/**
 * The daemon reaches the library only through its public entry, lib/index.ts, as any user of the package
 * would; and nothing under daemon/ (which ships) imports tests or benchmarks (which do not).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import ts from 'typescript';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const LIB_ENTRY = 'lib/index.ts';
const UNSHIPPED = ['test/', 'benchmarks/'];

/** Every import, re-export and dynamic import of `source` (repo-relative `file`) that breaks the rules. */
function importViolations(file: string, source: string): string[] {
  const { importedFiles } = ts.preProcessFile(source, true, true);
  return importedFiles.flatMap(({ fileName: specifier }) => {
    if (!specifier.startsWith('.')) return [];
    const target = posix.join(posix.dirname(file), specifier).replace(/\.js$/, '.ts');
    if (target.startsWith('lib/') && target !== LIB_ENTRY) {
      const entry = posix.relative(posix.dirname(file), LIB_ENTRY).replace(/\.ts$/, '.js');
      return [`${file} imports ${specifier}: use ${entry}`];
    }
    if (UNSHIPPED.some((folder) => target.startsWith(folder))) {
      return [`${file} imports ${specifier}, which is not published with the package`];
    }
    return [];
  });
}

function sourceFiles(folder: string): string[] {
  return readdirSync(posix.join(ROOT, folder), { withFileTypes: true }).flatMap((entry) => {
    const path = posix.join(folder, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return /\.(ts|mts|mjs|js)$/.test(entry.name) ? [path] : [];
  });
}

t.test('the checker catches every way in and lets the public entry through', async (t) => {
  const file = 'daemon/sources/example.ts';
  const source = [
    "import { NetworkSet } from '../../lib/index.js';",
    "import { parseRate } from '../../lib/tc/units.js';",
    "import type { Qdisc } from '../../lib/tc/objects.js';",
    "export { isShaperRoot } from '../../lib/shaper/layout.js';",
    "const later = await import('../../lib/wire/errors.js');",
    "import { createTopology } from '../../test/helpers/daemon.js';",
    "import { tail } from './tail.js';",
    "import { z } from 'zod';",
  ].join('\n');
  t.same(importViolations(file, source), [
    `${file} imports ../../lib/tc/units.js: use ../../lib/index.js`,
    `${file} imports ../../lib/tc/objects.js: use ../../lib/index.js`,
    `${file} imports ../../lib/shaper/layout.js: use ../../lib/index.js`,
    `${file} imports ../../lib/wire/errors.js: use ../../lib/index.js`,
    `${file} imports ../../test/helpers/daemon.js, which is not published with the package`,
  ]);
});

t.test('every daemon file imports lib through lib/index.ts and nothing unpublished', async (t) => {
  const files = sourceFiles('daemon');
  const found = files.includes('daemon/shaperrd.ts') && files.includes('daemon/operator/shaperr-cli.ts');
  t.ok(found, `found the daemon's ${files.length} source files`);
  t.same(
    files.flatMap((file) => importViolations(file, readFileSync(posix.join(ROOT, file), 'utf8'))),
    [],
  );
});
