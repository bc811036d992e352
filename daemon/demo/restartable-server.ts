/**
 * An HTTP(S) server the test servers can take down and bring back on the same port: `down()` cuts every
 * connection at once (no close frame, no FIN handshake left pending), as when the real server dies, and
 * `listen()` opens the same address again.
 */
import { createServer, type IncomingMessage, type RequestListener, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';

export type UpgradeListener = (request: IncomingMessage, socket: Socket, head: Buffer) => void;

export interface RestartableServerOptions {
  /** Default 127.0.0.1. */
  host?: string | undefined;
  /** 0 or none: any free port, kept from the first listen on. */
  port?: number | undefined;
  /** HTTPS with this key and certificate (PEM). */
  tls?: { key: string; cert: string } | undefined;
}

export class RestartableServer {
  private server?: Server;
  private readonly connections = new Set<Socket>();
  private readonly host: string;
  port: number;

  constructor(
    private readonly onRequest: RequestListener,
    private readonly onUpgrade: UpgradeListener,
    private readonly options: RestartableServerOptions = {},
  ) {
    this.host = options.host ?? '127.0.0.1';
    this.port = options.port ?? 0;
  }

  get url(): string {
    return `${this.options.tls ? 'https' : 'http'}://${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.port}`;
  }

  /** TCP connections open now (HTTP kept alive, websockets). */
  get openConnections(): number {
    return this.connections.size;
  }

  async listen(): Promise<void> {
    if (this.server) return;
    const { tls } = this.options;
    const server = tls ? createHttpsServer({ key: tls.key, cert: tls.cert }, this.onRequest) : createServer(this.onRequest);
    server.on('upgrade', this.onUpgrade);
    const track = (socket: Socket) => {
      this.connections.add(socket);
      socket.once('close', () => this.connections.delete(socket));
    };
    // Over TLS both the TCP socket and the TLS one on it are counted (and cut).
    server.on('connection', track);
    server.on('secureConnection', track);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, this.host, () => resolve());
    });
    this.port = (server.address() as AddressInfo).port;
    this.server = server;
  }

  /** Nothing listens any more and every connection is cut. */
  async down(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    for (const socket of this.connections) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
}
