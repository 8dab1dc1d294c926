// Haraka peer of plugins/spam_filter.zig: reads the whole message after DATA
// and counts the same eight keywords, ASCII case-insensitive, one point per
// keyword found; at the threshold (5) the message is refused with 554.
const KEYWORDS = ['viagra', 'casino', 'winner', 'free money', 'click here', 'limited time', 'act now', 'congratulations']
const THRESHOLD = 5

exports.hook_data_post = function (next, connection) {
    const txn = connection.transaction
    txn.message_stream.get_data((bytes) => {
        const text = bytes.toString('latin1').toLowerCase()
        let score = 0
        for (const keyword of KEYWORDS) if (text.includes(keyword)) score++
        txn.notes.spam_score = score
        if (score >= THRESHOLD) return next(DENY, '5.7.1 Message refused as spam')
        next()
    })
}
