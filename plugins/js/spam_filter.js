// spam-filter in JavaScript: the world smtp:plugin/smtp-plugin@1.0.0
// (abi/smtp-plugin.wit), built into a component with
//   npx smtp-server plugin build plugins/js/spam_filter.js --target component
// It gives the results of plugins/spam_filter.zig on the parity table
// (test/plugins/parity.test.ts): the same metadata, config keys and scores.
//
// Config (JSON): spam_threshold (a number > 0, default 5.0) and
// blacklist_keywords (at most 64 strings, default the guide's eight);
// other keys are ignored. Anything else refuses init, as in the Zig filter.
// The Zig filter reads its config with std.json, which also takes a few
// things JSON.parse does not (a number written as a string, "3"); this
// example keeps to plain JSON.
import { log } from 'smtp:plugin/host@1.0.0';

const DEFAULT_KEYWORDS = ['viagra', 'casino', 'winner', 'free money', 'click here', 'limited time', 'act now', 'congratulations'];
const DEFAULT_THRESHOLD = 5.0;
const KEYWORDS_MAX = 64;
const MESSAGE_FILTERED = 'message-filtered';
const encoder = new TextEncoder();

let threshold = DEFAULT_THRESHOLD;
let patterns = DEFAULT_KEYWORDS.map(keywordPattern);

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

export function init(config) {
  let parsed;
  try {
    parsed = JSON.parse(config === '' ? '{}' : config);
  } catch {
    log('warn', '[spam-filter] Invalid config: not JSON');
    return 1;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return 1;
  const value = parsed.spam_threshold ?? DEFAULT_THRESHOLD;
  if (typeof value !== 'number' || !(value > 0)) {
    log('warn', '[spam-filter] Invalid config: spam_threshold must be > 0');
    return 1;
  }
  const keywords = parsed.blacklist_keywords ?? DEFAULT_KEYWORDS;
  if (!Array.isArray(keywords) || keywords.length > KEYWORDS_MAX || keywords.some((k) => typeof k !== 'string')) {
    log('warn', `[spam-filter] Invalid config: blacklist_keywords must be at most ${KEYWORDS_MAX} strings`);
    return 1;
  }
  threshold = value;
  patterns = keywords.map(keywordPattern);
  log('info', `[spam-filter] Initialized with threshold: ${threshold}`);
  return 0;
}

export function deinit() {
  threshold = DEFAULT_THRESHOLD;
  patterns = DEFAULT_KEYWORDS.map(keywordPattern);
}

export function getMetadata() {
  return {
    name: 'spam-filter',
    version: '1.1.0',
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
  const body = context.getMetadata('message_body');
  if (body === undefined) return 0;
  const text = binaryString(body);
  const score = patterns.filter((pattern) => pattern !== null && pattern.test(text)).length;
  // Zig prints the f64 score with {d}: an integer shows no decimals, as String() does.
  if (context.setMetadata('spam_score', encoder.encode(String(score))) !== 'ok') return 0;
  if (score < threshold) return 0;
  if (context.setMetadata('is_spam', encoder.encode('true')) !== 'ok') return 0;
  log('info', `[spam-filter] Message flagged as spam (score: ${score})`);
  return 1; // stop: no later plugin runs, the message is refused
}

export function enable() {
  return 0;
}

export function disable() {
  return 0;
}
