/**
 * The Unraid template says what examples/docker-compose.yml says (the lane runs the compose file): host
 * network, NET_ADMIN only, never privileged, read-only root, the same two folders with the same modes, TZ;
 * its WebUI port is the status page's port in examples/shaperr.container.yaml, and that config is valid.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { XMLParser } from 'fast-xml-parser';
import t from 'tap';
import { parse } from 'yaml';
import { validateConfig } from '../daemon/config.js';
import { composeService } from './container-lane/podman.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const read = (path: string) => readFileSync(`${REPO}/${path}`, 'utf8');

interface TemplateConfig {
  Name: string;
  Target: string;
  Mode: string;
  Type: 'Path' | 'Port' | 'Variable';
  '#text'?: string | number;
}

const template = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '' }).parse(read('examples/unraid-shaperr.xml')).Container as {
  Repository: string;
  Network: string;
  Privileged: boolean;
  WebUI: string;
  ExtraParams: string;
  Config: TemplateConfig[];
};
const compose = composeService();

t.test('the Unraid template and the compose service agree', async (t) => {
  t.equal(template.Network, 'host', 'host network');
  t.equal(template.Privileged, false, 'not privileged');
  t.equal(`localhost/${template.Repository}`, `localhost/${compose.image}`, 'the image compose builds');
  const extra = template.ExtraParams.split(/\s+/);
  for (const cap of compose.cap_drop ?? []) t.ok(extra.includes(`--cap-drop=${cap}`), `--cap-drop=${cap}`);
  for (const cap of compose.cap_add ?? []) t.ok(extra.includes(`--cap-add=${cap}`), `--cap-add=${cap}`);
  for (const option of compose.security_opt ?? []) t.ok(extra.includes(`--security-opt=${option}`), `--security-opt=${option}`);
  t.equal(compose.read_only && extra.includes('--read-only'), true, '--read-only');
  t.same(
    extra.filter((each) => /^--cap-add/.test(each)),
    ['--cap-add=NET_ADMIN'],
    'no capability but NET_ADMIN',
  );

  const paths = template.Config.filter((config) => config.Type === 'Path').map(({ Target, Mode }) => `${Target}:${Mode}`);
  const volumes = (compose.volumes ?? []).map((volume) => {
    const [, target, mode = 'rw'] = volume.split(':');
    return `${target}:${mode}`;
  });
  t.same(paths.sort(), volumes.sort(), 'the same folders, the same modes');
  const variables = template.Config.filter((config) => config.Type === 'Variable').map((config) => config.Target);
  for (const variable of (compose.environment ?? []).map((each) => each.split('=')[0]!)) t.ok(variables.includes(variable), `${variable} is set`);
  t.ok(variables.includes('PUID') && variables.includes('PGID'), 'PUID and PGID');
  const pgid = template.Config.find((config) => config.Target === 'PGID')?.['#text'];
  t.ok(extra.includes(`--group-add=${pgid}`), `the PGID (${pgid}) is the group Extra Parameters add`);
});

t.test("the WebUI opens the status page of the container's config", async (t) => {
  const config = validateConfig(parse(read('examples/shaperr.container.yaml')));
  const port = config.status?.listen.split(':').pop();
  t.equal(template.WebUI, `http://[IP]:[PORT:${port}]/`, `WebUI port ${port}`);
  t.equal(template.Config.find((each) => each.Type === 'Port')?.Target, port, 'the Port field is the same');
  t.ok(config.status?.token, 'the status page is on the LAN with a token');
  t.notMatch(config.status?.listen, /^127\./, 'bound beyond loopback, so another machine can open it');
});
