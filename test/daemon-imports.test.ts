/**
 * The daemon reaches the library only through its public entry, lib/index.ts, as any user of the package
 * would; nothing under daemon/ (which ships) imports tests or benchmarks (which do not); and the daemon's
 * layers import only downstream: sources → sessions → apply, the operator surface beside them, the
 * configuration below them all.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import ts from 'typescript';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const LIB_ENTRY = 'lib/index.ts';
const UNSHIPPED = ['test/', 'benchmarks/'];
/** What each part of the daemon never imports (a path ending in / is a folder). */
const LAYERS: Array<{ from: string; never: string[] }> = [
  { from: 'daemon/sources/', never: ['daemon/sessions/', 'daemon/apply/', 'daemon/operator/'] },
  { from: 'daemon/sessions/', never: ['daemon/apply/', 'daemon/operator/'] },
  { from: 'daemon/ceiling/', never: ['daemon/sessions/', 'daemon/apply/', 'daemon/operator/'] },
  // The configuration sits below everything it configures: they read it, it knows none of them.
  { from: 'daemon/config.ts', never: ['daemon/sources/', 'daemon/sessions/', 'daemon/ceiling/', 'daemon/apply/', 'daemon/operator/'] },
];
const under = (path: string, place: string): boolean => (place.endsWith('/') ? path.startsWith(place) : path === place);

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
    return LAYERS.filter((layer) => under(file, layer.from)).flatMap((layer) =>
      layer.never.filter((place) => under(target, place)).map((place) => `${file} imports ${specifier}: ${layer.from} never imports ${place}`),
    );
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

t.test('the checker catches every import that climbs back up a layer, and lets the downstream ones through', async (t) => {
  const fromSources = [
    "import type { Policy } from '../sessions/policy.js';",
    "import { ShaperPort } from '../apply/shaper-port.js';",
    "export { buildStatus } from '../operator/status.js';",
    "import type { PlaybackEvent } from './source.js';",
    "import { type ShaperrConfig } from '../config.js';",
  ].join('\n');
  t.same(importViolations('daemon/sources/jellyfin.ts', fromSources), [
    'daemon/sources/jellyfin.ts imports ../sessions/policy.js: daemon/sources/ never imports daemon/sessions/',
    'daemon/sources/jellyfin.ts imports ../apply/shaper-port.js: daemon/sources/ never imports daemon/apply/',
    'daemon/sources/jellyfin.ts imports ../operator/status.js: daemon/sources/ never imports daemon/operator/',
  ]);
  const fromSessions = [
    "import { saveState } from '../apply/state.js';",
    "const later = await import('../operator/metrics.js');",
    "import type { PlaybackEvent } from '../sources/source.js';",
  ].join('\n');
  t.same(importViolations('daemon/sessions/sessions.ts', fromSessions), [
    'daemon/sessions/sessions.ts imports ../apply/state.js: daemon/sessions/ never imports daemon/apply/',
    'daemon/sessions/sessions.ts imports ../operator/metrics.js: daemon/sessions/ never imports daemon/operator/',
  ]);
  t.same(importViolations('daemon/config.ts', "import { isLoopbackListen } from './operator/http.js';\nimport { parseListen } from './support/listen.js';"), [
    'daemon/config.ts imports ./operator/http.js: daemon/config.ts never imports daemon/operator/',
  ]);
  t.same(importViolations('daemon/shaperrd.ts', "import { startStatusServer } from './operator/http.js';"), [], 'the daemon itself wires every layer');
});

t.test('every daemon file imports lib through lib/index.ts and nothing unpublished, and no layer climbs back up', async (t) => {
  const files = sourceFiles('daemon');
  const found = files.includes('daemon/shaperrd.ts') && files.includes('daemon/operator/shaperr-cli.ts');
  t.ok(found, `found the daemon's ${files.length} source files`);
  t.same(
    files.flatMap((file) => importViolations(file, readFileSync(posix.join(ROOT, file), 'utf8'))),
    [],
  );
});
