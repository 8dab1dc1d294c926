import { describe, expect, it } from 'vitest';
import { formatMilterAddress, parseMilterAddress } from '../../src/milter/address.js';
import { expectCode } from '../helpers/expect-code.js';

describe('parseMilterAddress', () => {
  it('reads the Postfix and Sendmail forms and refuses the rest with SMTP_E_CONFIG', async () => {
    expect(parseMilterAddress('inet:127.0.0.1:11332')).toEqual({ kind: 'inet', host: '127.0.0.1', port: 11_332 });
    expect(parseMilterAddress('inet:8891@localhost')).toEqual({ kind: 'inet', host: 'localhost', port: 8891 });
    expect(parseMilterAddress('inet6:[::1]:8891')).toEqual({ kind: 'inet', host: '::1', port: 8891 });
    expect(parseMilterAddress('unix:/run/milter.sock')).toEqual({ kind: 'unix', path: '/run/milter.sock' });
    expect(formatMilterAddress(parseMilterAddress('inet:8891@localhost'))).toBe('inet:localhost:8891');
    expect(formatMilterAddress(parseMilterAddress('inet6:[::1]:8891'))).toBe('inet:[::1]:8891');
    for (const bad of ['127.0.0.1:11332', 'inet:host:0', 'inet:host:70000', 'unix:relative.sock', 'tcp:1.2.3.4:5']) {
      await expectCode(() => parseMilterAddress(bad), 'SMTP_E_CONFIG');
    }
  });
});
