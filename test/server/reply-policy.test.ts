import { describe, expect, it } from 'vitest';
import { hostError } from '../../src/errors.js';
import { HookContext } from '../../src/plugin/hook-context.js';
import { REPLIES, chainRefusal, errorReply } from '../../src/server/reply-policy.js';

function context(changes: Record<string, string> = {}): HookContext {
  const made = HookContext.of('message_filtered', { sender: 'a@example.org' });
  for (const [key, value] of Object.entries(changes)) made.applyPluginChange(key, Buffer.from(value));
  return made;
}

describe('the reply policy', () => {
  it("answers a gating hook's refusal with the hook's default, or the plugin's chosen code and one-line text", () => {
    expect(chainRefusal('message_filtered', { action: 'stop', plugin: 'spam' }, context())).toEqual({ code: 554, text: '5.7.1 Message refused by content filter', plugin: 'spam', reason: 'stop' });
    expect(chainRefusal('command_validated', { action: 'cancel', plugin: 'rate' }, context({ smtp_reply_code: '451', smtp_reply_text: '4.7.1 Rate limit\r\n250 fake' }))).toEqual({
      code: 451,
      text: '4.7.1 Rate limit 250 fake',
      plugin: 'rate',
      reason: 'cancel',
    });
    // An invalid code falls back to the hook's; a code without text gets the default text with its class.
    expect(chainRefusal('message_filtered', { action: 'stop', plugin: 'x' }, context({ smtp_reply_code: '250' }))).toMatchObject({ code: 554, text: '5.7.1 Message refused by content filter' });
    expect(chainRefusal('message_filtered', { action: 'stop', plugin: 'x' }, context({ smtp_reply_code: '451' }))).toMatchObject({ code: 451, text: '4.7.1 Message refused by content filter' });
  });

  it('never refuses at a notification hook or when the chain continued', () => {
    expect(chainRefusal('message_stored', { action: 'cancel', plugin: 'logger' }, context())).toBeNull();
    expect(chainRefusal('message_filtered', { action: 'continue' }, context())).toBeNull();
    expect(chainRefusal('message_stored', { action: 'error', plugin: 'logger', policy: 'reject' }, null)).toBeNull();
  });

  it("answers a plugin failure by its on_error policy, and a host error by the error's own reply", () => {
    expect(chainRefusal('message_filtered', { action: 'error', plugin: 'p', policy: 'tempfail' }, null)).toMatchObject({ code: 451, text: REPLIES.pluginTempfail.text, reason: 'error' });
    expect(chainRefusal('message_filtered', { action: 'error', plugin: 'p', policy: 'reject' }, null)).toMatchObject({ code: 554, text: '5.3.0 Refused after a plugin failure' });
    expect(errorReply(hostError('SMTP_E_SPOOL_WRITE', 'disk full'))).toEqual({ code: 451, text: '4.3.0 Temporary server error, try again later' });
    expect(errorReply(new Error('bug'))).toBe(REPLIES.serverError);
  });
});
