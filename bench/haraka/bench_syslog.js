// Haraka peer of plugins/message_logger.zig: one RFC 5424 record per queued
// message, octet-counted, over one kept TCP connection to the collector at
// 127.0.0.1:$BENCH_SYSLOG_PORT (the bench's rsyslogd), written before the 250
// reply (queue_ok runs before Haraka answers). Same fields as the Zig plugin.
const net = require('node:net')
const os = require('node:os')

const PORT = Number(process.env.BENCH_SYSLOG_PORT)
const HOST = os.hostname()
let socket = null

function collector() {
    if (socket === null || socket.destroyed) {
        socket = net.createConnection({ host: '127.0.0.1', port: PORT })
        socket.on('error', () => {
            socket = null
        })
    }
    return socket
}

const escape = (value) => String(value).replace(/["\\\]]/g, '\\$&').replace(/[\x00-\x1f\x7f]/g, '?')

exports.hook_queue_ok = function (next, connection) {
    const txn = connection.transaction
    const time = new Date().toISOString()
    const params = [
        ['message_id', (txn.header.get('Message-ID') || '').trim()],
        ['sender', String(txn.mail_from.address)],
        ['recipients', txn.rcpt_to.map((r) => String(r.address)).join(',')],
        ['size', txn.data_bytes],
        ['spool_id', txn.uuid],
        ['quarantined', 'false'],
        ['time', time],
    ]
    if (txn.notes.spam_score !== undefined) params.push(['spam_score', txn.notes.spam_score])
    const sd = params.map(([k, v]) => `${k}="${escape(v)}"`).join(' ')
    const record = `<22>1 ${time} ${HOST} smtp-server - stored [smtp@32473 ${sd}]`
    collector().write(`${Buffer.byteLength(record)} ${record}`)
    next()
}
