import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

/** A self-signed certificate for STARTTLS (CN=mx.test, one day), made by openssl in `dir` for this run. */
export function selfSigned(dir: string): { key: string; cert: string } {
  const key = join(dir, 'key.pem');
  const cert = join(dir, 'cert.pem');
  const run = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=mx.test'], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`openssl failed: ${run.stderr}`);
  return { key, cert };
}
