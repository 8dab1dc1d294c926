// Haraka peer of the bench (bench/smtp-throughput.mjs): the minimum Haraka
// needs to accept mail for the load, with no DNS. It answers lookup_rdns
// itself (so Haraka does not call dns.reverse) and accepts every recipient
// (Haraka refuses recipients that no rcpt plugin accepts).
exports.hook_lookup_rdns = (next) => next(OK, 'localhost')
exports.hook_rcpt = (next) => next(OK)
