/**
 * An HTTP server the test servers can take down and bring back on the same port: `down()` cuts every
 * connection at once (no close frame, no FIN handshake left pending), as when the real server dies, and
 * `listen()` opens the same address again.
 */
import { createServer, type IncomingMessage, type RequestListener, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type UpgradeListener = (request: IncomingMessage, socket: Socket, head: Buffer) => void;

export class RestartableServer {
  private server?: Server;
  private readonly connections = new Set<Socket>();

  constructor(
    private readonly onRequest: RequestListener,
    private readonly onUpgrade: UpgradeListener,
    private readonly host = '127.0.0.1',
    /** 0: any free port, kept from the first listen on. */
    public port = 0,
  ) {}

  get url(): string {
    return `http://${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.port}`;
  }

  /** TCP connections open now (HTTP kept alive, websockets). */
  get openConnections(): number {
    return this.connections.size;
  }

  async listen(): Promise<void> {
    if (this.server) return;
    const server = createServer(this.onRequest);
    server.on('upgrade', this.onUpgrade);
    server.on('connection', (socket: Socket) => {
      this.connections.add(socket);
      socket.once('close', () => this.connections.delete(socket));
    });
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
