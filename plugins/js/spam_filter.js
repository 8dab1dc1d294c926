// spam-filter in JavaScript: the world smtp:plugin/smtp-plugin@1.0.0
// (abi/smtp-plugin.wit), built into a component with
//   npx smtp-server plugin build plugins/js/spam_filter.js --target component
// It gives the results of plugins/spam_filter.zig on the parity table
// (test/plugins/parity.test.ts): the same metadata, config keys and scores.
//
// Config (JSON), the keys of the guide's plugins/spam_filter.json, checked
// as the Zig filter checks them (docs/plugins/spam_filter.md): enabled
// (true only), spam_threshold (a number > 0, default 5.0),
// blacklist_keywords (at most 64 strings, default the guide's eight),
// whitelist (at most 256 domain names), quarantine (default false),
// quarantine_path (1 to 1024 bytes, only with quarantine), auto_learn and
// bayesian_filtering (false only: the features are not there). Other keys
// are ignored; anything else refuses init. The Zig filter reads its config
// with std.json, which also takes a few things JSON.parse does not (a
// number written as a string, "3"); this example keeps to plain JSON.
import { log } from 'smtp:plugin/host@1.0.0';

const DEFAULT_KEYWORDS = ['viagra', 'casino', 'winner', 'free money', 'click here', 'limited time', 'act now', 'congratulations'];
const DEFAULT_THRESHOLD = 5.0;
const KEYWORDS_MAX = 64;
/** Each entry is tried per message. */
const WHITELIST_MAX = 256;
/** The longest domain name DNS allows, in text form. */
const DOMAIN_BYTES_MAX = 253;
const QUARANTINE_PATH_BYTES_MAX = 1024;
/** Letters, digits and '-' in labels joined by single dots, as the Zig isDomain. */
const DOMAIN_PATTERN = /^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$/;
const REPLY_CODE = '554';
const REPLY_TEXT = '5.7.1 Message refused as spam';
const MESSAGE_FILTERED = 'message-filtered';
const encoder = new TextEncoder();

let threshold = DEFAULT_THRESHOLD;
let patterns = DEFAULT_KEYWORDS.map(keywordPattern);
/** Whitelisted domains, lower case. */
let whitelist = [];
let quarantine = false;
/** @type {string | undefined} */
let quarantinePath;

/**
 * A keyword as a RegExp over the body's bytes (one char per byte) that
 * matches ASCII letters in either case and every other byte exactly, as the
 * Zig filter's std.ascii.eqlIgnoreCase does. The engine's own regex search
 * is far faster than a loop over bytes in JavaScript.
 */
function keywordPattern(keyword) {
  if (keyword.length === 0) return null; // never matches, as in Zig
  let source = '';
  for (const byte of encoder.encode(keyword)) {
    const lower = byte | 0x20;
    source += lower >= 0x61 && lower <= 0x7a ? `[${String.fromCharCode(lower, lower & ~0x20)}]` : `\\x${byte.toString(16).padStart(2, '0')}`;
  }
  return new RegExp(source);
}

/** The bytes as a string of char codes 0-255, one per byte. */
function binaryString(bytes) {
  let text = '';
  for (let at = 0; at < bytes.length; at += 8192) text += String.fromCharCode.apply(null, bytes.subarray(at, at + 8192));
  return text;
}

/** Lower-cases ASCII letters only, as std.ascii.eqlIgnoreCase compares. */
function asciiLower(text) {
  return text.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) | 0x20));
}

/** Whether `domain` (lower case) is `listed` or one of its subdomains: "example.com" covers "mail.example.com", not "badexample.com". */
function domainCovers(listed, domain) {
  return domain === listed || (domain.length > listed.length && domain.endsWith(listed) && domain[domain.length - listed.length - 1] === '.');
}

/** The envelope sender's domain: sender_domain, else what follows the last '@' of sender. */
function senderDomain(context) {
  const domain = context.getMetadata('sender_domain');
  if (domain !== undefined) return binaryString(domain);
  const sender = context.getMetadata('sender');
  if (sender === undefined) return undefined;
  const text = binaryString(sender);
  const at = text.lastIndexOf('@');
  return at < 0 ? undefined : text.slice(at + 1);
}

/** A value that is absent takes its default; present, it must have the type (null included, as std.json refuses null for a non-optional field). */
function boolean(parsed, key, fallback) {
  const value = parsed[key];
  if (value === undefined) return fallback;
  return typeof value === 'boolean' ? value : null;
}

/** Why `parsed` cannot be used, or undefined when it can (the Zig filter's configProblem, in its order). */
function configProblem(parsed) {
  const enabled = boolean(parsed, 'enabled', true);
  const quarantineOn = boolean(parsed, 'quarantine', false);
  const autoLearn = boolean(parsed, 'auto_learn', false);
  const bayesian = boolean(parsed, 'bayesian_filtering', false);
  if (enabled === null || quarantineOn === null || autoLearn === null || bayesian === null) return 'enabled, quarantine, auto_learn and bayesian_filtering must be true or false';
  const value = parsed.spam_threshold === undefined ? DEFAULT_THRESHOLD : parsed.spam_threshold;
  const keywords = parsed.blacklist_keywords ?? DEFAULT_KEYWORDS;
  const domains = parsed.whitelist === undefined ? [] : parsed.whitelist;
  const path = parsed.quarantine_path ?? undefined;
  if (typeof value !== 'number') return 'spam_threshold must be a number';
  if (!Array.isArray(keywords) || keywords.some((k) => typeof k !== 'string')) return 'blacklist_keywords must be strings';
  if (!Array.isArray(domains) || domains.some((d) => typeof d !== 'string')) return 'whitelist must be strings';
  if (path !== undefined && typeof path !== 'string') return 'quarantine_path must be a string';
  if (!enabled) return 'enabled must be true (to turn the filter off set enabled = false in its [[plugins.plugin]] entry)';
  if (!(value > 0)) return 'spam_threshold must be > 0';
  if (keywords.length > KEYWORDS_MAX) return `at most ${KEYWORDS_MAX} blacklist_keywords`;
  if (domains.length > WHITELIST_MAX) return `at most ${WHITELIST_MAX} whitelist domains`;
  if (domains.some((d) => d.length > DOMAIN_BYTES_MAX || !DOMAIN_PATTERN.test(d))) return 'whitelist entries must be domain names (letters, digits, \'-\' and \'.\', e.g. "example.com")';
  if (path !== undefined) {
    if (!quarantineOn) return 'quarantine_path is set but quarantine is false (set quarantine to true, or remove quarantine_path)';
    const bytes = encoder.encode(path).length;
    if (bytes === 0 || bytes > QUARANTINE_PATH_BYTES_MAX || path.includes('\0')) return `quarantine_path must be 1 to ${QUARANTINE_PATH_BYTES_MAX} bytes without NUL`;
  }
  if (autoLearn) return 'auto_learn is not supported by this filter (set it to false or remove it)';
  if (bayesian) return 'bayesian_filtering is not supported by this filter (set it to false or remove it)';
  return undefined;
}

export function init(config) {
  let parsed;
  try {
    parsed = JSON.parse(config === '' ? '{}' : config);
  } catch {
    log('warn', '[spam-filter] Invalid config: not JSON');
    return 1;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return 1;
  const problem = configProblem(parsed);
  if (problem !== undefined) {
    log('warn', `[spam-filter] Invalid config: ${problem}`);
    return 1;
  }
  threshold = parsed.spam_threshold ?? DEFAULT_THRESHOLD;
  patterns = (parsed.blacklist_keywords ?? DEFAULT_KEYWORDS).map(keywordPattern);
  whitelist = (parsed.whitelist ?? []).map(asciiLower);
  quarantine = parsed.quarantine ?? false;
  quarantinePath = parsed.quarantine_path ?? undefined;
  log('info', `[spam-filter] Initialized with threshold: ${threshold}, ${whitelist.length} whitelisted domains, spam is ${quarantine ? 'quarantined' : 'refused'}`);
  return 0;
}

export function deinit() {
  threshold = DEFAULT_THRESHOLD;
  patterns = DEFAULT_KEYWORDS.map(keywordPattern);
  whitelist = [];
  quarantine = false;
  quarantinePath = undefined;
}

export function getMetadata() {
  return {
    name: 'spam-filter',
    version: '1.2.0',
    author: 'SMTP Team',
    description: 'Basic spam filtering using keyword analysis',
    license: 'MIT',
    dependencies: [],
    minServerVersion: '0.28.0',
    maxServerVersion: undefined,
    handledHooks: 1n << 2n, // message_filtered only
  };
}

export function executeHook(context) {
  if (context.hookType() !== MESSAGE_FILTERED) return 0;
  const domain = senderDomain(context);
  if (domain !== undefined && domain !== '' && whitelist.some((listed) => domainCovers(listed, asciiLower(domain)))) {
    context.setMetadata('spam_whitelisted', encoder.encode('true'));
    return 0;
  }
  const body = context.getMetadata('message_body');
  if (body === undefined) return 0;
  const text = binaryString(body);
  const score = patterns.filter((pattern) => pattern !== null && pattern.test(text)).length;
  // Zig prints the f64 score with {d}: an integer shows no decimals, as String() does.
  if (context.setMetadata('spam_score', encoder.encode(String(score))) !== 'ok') return 0;
  if (score < threshold) return 0;
  // From here the verdict stands even if a key cannot be set: without the
  // reply keys the host still refuses (its default 554 for this stage).
  context.setMetadata('is_spam', encoder.encode('true'));
  if (quarantine) {
    if (quarantinePath !== undefined) context.setMetadata('quarantine_path', encoder.encode(quarantinePath));
    context.setMetadata('quarantine', encoder.encode('true'));
    log('info', `[spam-filter] Message quarantined as spam (score: ${score})`);
  } else {
    context.setMetadata('smtp_reply_code', encoder.encode(REPLY_CODE));
    context.setMetadata('smtp_reply_text', encoder.encode(REPLY_TEXT));
    log('info', `[spam-filter] Message refused as spam (score: ${score})`);
  }
  return 1; // stop: no later plugin runs; the host refuses or quarantines
}

export function enable() {
  return 0;
}

export function disable() {
  return 0;
}
