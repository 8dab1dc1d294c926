import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, runClient } from '../../helpers/server.js';
import { startService, type Service } from './process.js';

/** A user entry: inetOrgPerson `uid=<uid>,ou=<ou>,<suffix>` with a hashed userPassword. */
export interface LdapUser {
  readonly uid: string;
  readonly password: string;
  /** The organizational unit under the suffix; default "people". */
  readonly ou?: string;
}

/** A running slapd, on 127.0.0.1 only, with its data in a temporary folder. */
export interface Slapd {
  readonly port: number;
  /** ldap://127.0.0.1:PORT/ for the OpenLDAP clients. */
  readonly url: string;
  /** tcp:127.0.0.1:PORT, the form of a plugin's `server` and `allow_connect`. */
  readonly address: string;
  readonly suffix: string;
  readonly rootDn: string;
  readonly rootPassword: string;
  /** A read-only account for search-then-bind: `cn=reader,ou=services,<suffix>`. */
  readonly serviceDn: string;
  readonly servicePassword: string;
  readonly dir: string;
  /** The running slapd process (replaced by restart). */
  readonly service: Service;
  /** Runs ldapadd (as the root DN) with `ldif`; throws with its output on failure. */
  add(ldif: string): Promise<void>;
  /** Stops slapd and starts it again on the same port and database: open connections are closed. */
  restart(): Promise<void>;
  /** Stops slapd by PID and removes its folder. */
  stop(): Promise<void>;
}

export const SUFFIX = 'dc=example,dc=org';
const ROOT_PASSWORD = 'root-secret-4e1b';
const SERVICE_PASSWORD = 'reader-secret-77a0';
const SCHEMAS = ['core', 'cosine', 'inetorgperson', 'nis'];
/** Debian builds the backends as modules. */
const MODULE_PATH = '/usr/lib/ldap';

/** `{SSHA}...` for `password`, from slappasswd, so slapd stores no clear text. */
export function hashPassword(password: string): string {
  const run = spawnSync('slappasswd', ['-h', '{SSHA}', '-s', password], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`slappasswd failed: ${run.stderr}`);
  return run.stdout.trim();
}

function slapdConf(dir: string, rootDn: string): string {
  return [
    ...SCHEMAS.map((schema) => `include /etc/ldap/schema/${schema}.schema`),
    `modulepath ${MODULE_PATH}`,
    'moduleload back_mdb',
    `pidfile ${join(dir, 'slapd.pid')}`,
    `argsfile ${join(dir, 'slapd.args')}`,
    // Password hashes are for binds only; everything else may be read, also
    // anonymously (the anonymous search-then-bind mode relies on it).
    'access to attrs=userPassword by self write by anonymous auth by * none',
    'access to * by * read',
    'database mdb',
    'maxsize 16777216',
    `suffix "${SUFFIX}"`,
    `rootdn "${rootDn}"`,
    `rootpw ${ROOT_PASSWORD}`,
    `directory ${join(dir, 'db')}`,
    '',
  ].join('\n');
}

/** The LDIF of `users`, with the organizational units they need. */
export function usersLdif(users: readonly LdapUser[]): string {
  const units = [...new Set(users.map((u) => u.ou ?? 'people'))];
  const entries = units.map((ou) => `dn: ou=${ou},${SUFFIX}\nobjectClass: organizationalUnit\nou: ${ou}\n`);
  for (const user of users) {
    entries.push(
      `dn: uid=${user.uid},ou=${user.ou ?? 'people'},${SUFFIX}\nobjectClass: inetOrgPerson\nuid: ${user.uid}\ncn: ${user.uid}\nsn: ${user.uid}\n` +
        `mail: ${user.uid}@example.org\nuserPassword: ${hashPassword(user.password)}\n`,
    );
  }
  return entries.join('\n');
}

/**
 * Starts slapd in the foreground (`-d 0`: no fork, nothing logged but
 * errors) on a free loopback port, with an mdb database for
 * dc=example,dc=org holding the base entry, a service account and `users`.
 */
export async function startSlapd(users: readonly LdapUser[]): Promise<Slapd> {
  const dir = mkdtempSync(join(tmpdir(), 'smtp-slapd-'));
  mkdirSync(join(dir, 'db'));
  const rootDn = `cn=admin,${SUFFIX}`;
  const conf = join(dir, 'slapd.conf');
  writeFileSync(conf, slapdConf(dir, rootDn));
  const port = await freePort();
  const url = `ldap://127.0.0.1:${port}/`;
  const whoami = async () => (await runClient('ldapwhoami', ['-x', '-H', url, '-D', rootDn, '-w', ROOT_PASSWORD], 5_000)).status === 0;
  const launch = () => startService('slapd', ['-d', '0', '-f', conf, '-h', url], whoami, { cwd: dir, timeoutMs: 20_000 });
  let service: Service;
  try {
    service = await launch();
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  let ldifCount = 0;
  const slapd: Slapd = {
    port,
    url,
    address: `tcp:127.0.0.1:${port}`,
    suffix: SUFFIX,
    rootDn,
    rootPassword: ROOT_PASSWORD,
    serviceDn: `cn=reader,ou=services,${SUFFIX}`,
    servicePassword: SERVICE_PASSWORD,
    dir,
    get service() {
      return service;
    },
    async add(ldif: string) {
      const file = join(dir, `add-${++ldifCount}.ldif`);
      writeFileSync(file, ldif);
      const run = await runClient('ldapadd', ['-x', '-H', url, '-D', rootDn, '-w', ROOT_PASSWORD, '-f', file], 20_000);
      if (run.status !== 0) throw new Error(`ldapadd ${file} failed (${run.status}): ${run.stdout}${run.stderr}`);
    },
    async restart() {
      await service.stop();
      service = await launch();
    },
    async stop() {
      await service.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await slapd.add(
      `dn: ${SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n` +
        `dn: ou=services,${SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n` +
        `dn: ${slapd.serviceDn}\nobjectClass: person\nobjectClass: simpleSecurityObject\ncn: reader\nsn: reader\nuserPassword: ${hashPassword(SERVICE_PASSWORD)}\n`,
    );
    if (users.length > 0) await slapd.add(usersLdif(users));
  } catch (error) {
    await slapd.stop();
    throw error;
  }
  return slapd;
}
