// smtp-server's connection class, reached through the package's "./lib/*"
// export. Only what src/server/hooked-smtp-server.ts uses is declared.
declare module 'smtp-server/lib/smtp-connection.js' {
  export class SMTPConnection {
    constructor(server: unknown, socket: unknown, socketOptions: unknown);
  }
}
