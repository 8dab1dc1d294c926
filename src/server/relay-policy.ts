import type { PolicyConfig } from '../config/config.js';
import { networkMatcher, parseNetwork, type Network } from '../config/networks.js';

/**
 * What the server accepts at RCPT, Postfix's way (smtpd_relay_restrictions =
 * permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination;
 * then local_recipient_maps): mail for a local domain from anyone, mail for
 * anywhere else only from relay_networks or an authenticated client. Pure:
 * the caller brings the frozen [policy] and what it knows of the session.
 * Where accepted mail goes is the delivery mode's business, not this.
 */

export interface RecipientQuery {
  /** The client's IP as the socket reports it (IPv4-mapped IPv6 allowed). */
  readonly clientIp: string;
  readonly authenticated: boolean;
  /** The address of the RCPT command, without angle brackets. */
  readonly recipient: string;
  /** Recipients the transaction has already accepted. */
  readonly recipientCount: number;
}

/** Why [policy] refused a recipient; src/server/reply-policy.ts turns it into the SMTP reply. */
export type RecipientRefusal = 'too-many-recipients' | 'relay-denied' | 'unknown-user';

export type RecipientDecision = { readonly accept: true; readonly local: boolean } | { readonly accept: false; readonly refusal: RecipientRefusal; readonly recipient: string };

/** The sets and matcher built once per frozen policy. */
interface Compiled {
  readonly localDomains: ReadonlySet<string>;
  readonly relayClient: (ip: string) => boolean;
  readonly localRecipients: ReadonlySet<string> | null;
}

const compiledPolicies = new WeakMap<PolicyConfig, Compiled>();

function compile(policy: PolicyConfig): Compiled {
  let compiled = compiledPolicies.get(policy);
  if (compiled === undefined) {
    // loadConfig has validated every network; one that fails here is a caller's hand-made policy.
    const networks = policy.relayNetworks.map((text) => {
      const network = parseNetwork(text);
      if (typeof network === 'string') throw new TypeError(`relay network ${network}`);
      return network;
    });
    compiled = {
      localDomains: new Set(policy.localDomains.map((domain) => domain.toLowerCase())),
      relayClient: networkMatcher(networks satisfies Network[]),
      localRecipients: policy.localRecipients === null ? null : new Set(policy.localRecipients.map((entry) => entry.toLowerCase())),
    };
    compiledPolicies.set(policy, compiled);
  }
  return compiled;
}

const ACCEPT_LOCAL: RecipientDecision = Object.freeze({ accept: true, local: true });
const ACCEPT_REMOTE: RecipientDecision = Object.freeze({ accept: true, local: false });

function refuse(refusal: RecipientRefusal, recipient: string): RecipientDecision {
  return Object.freeze({ accept: false, refusal, recipient });
}

/** True when the client may relay: Postfix's permit_mynetworks and permit_sasl_authenticated. */
export function mayRelay(policy: PolicyConfig, clientIp: string, authenticated: boolean): boolean {
  return authenticated || compile(policy).relayClient(clientIp);
}

/** Decides one RCPT. Domains compare case-insensitively; so do local users. */
export function decideRecipient(policy: PolicyConfig, query: RecipientQuery): RecipientDecision {
  if (query.recipientCount >= policy.maxRecipients) return refuse('too-many-recipients', query.recipient);
  const { localDomains, localRecipients } = compile(policy);
  const address = query.recipient;
  const at = address.lastIndexOf('@');
  const localPart = (at < 0 ? address : address.slice(0, at)).toLowerCase();
  const domain = at < 0 ? '' : address.slice(at + 1).toLowerCase().replace(/\.$/, '');
  // A bare "postmaster" (RFC 5321 4.5.1) has no domain: it is this server's.
  const local = at < 0 ? localDomains.size > 0 : localDomains.has(domain);
  const trusted = mayRelay(policy, query.clientIp, query.authenticated);
  // user%elsewhere@local and "user@elsewhere"@local are relay attempts in disguise
  // (Postfix's allow_untrusted_routing = no).
  if (!trusted && /[@%!]/.test(localPart)) return refuse('relay-denied', address);
  if (!local) return trusted ? ACCEPT_REMOTE : refuse('relay-denied', address);
  if (localRecipients === null || localPart === 'postmaster') return ACCEPT_LOCAL;
  if (localRecipients.has(localPart) || (at >= 0 && (localRecipients.has(`${localPart}@${domain}`) || localRecipients.has(`@${domain}`)))) return ACCEPT_LOCAL;
  return refuse('unknown-user', address);
}
