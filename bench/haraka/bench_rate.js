// Haraka peer of plugins/rate_limiter.zig (memory backend): counts MAIL FROM
// per sender domain in fixed windows aligned on the epoch, in a bounded
// in-memory table emptied at each new window; over the limit, 451.
const LIMIT = 1_000_000_000
const WINDOW_MS = 3_600_000
const KEYS_MAX = 10_000
const counts = new Map()
let window = -1

exports.hook_mail = function (next, connection, params) {
    const domain = String(params[0].host || '').toLowerCase().slice(0, 255)
    if (domain === '') return next()
    const now = Math.floor(Date.now() / WINDOW_MS)
    if (now !== window) {
        counts.clear()
        window = now
    }
    if (!counts.has(domain) && counts.size >= KEYS_MAX) return next()
    const count = (counts.get(domain) || 0) + 1
    counts.set(domain, count)
    if (count > LIMIT) return next(DENYSOFT, `4.7.1 Rate limit exceeded for ${domain}`)
    next()
}
