import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { STATUS_CODES } from 'node:http';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { DevCloudError } from './validate.js';

/** The JSON body of every error the devcloud sends. */
export interface ErrorBody {
  error: string;
  message: string;
  statusCode: number;
  code?: string;
}

export function errorBody(statusCode: number, message: string, code?: string): ErrorBody {
  return { error: STATUS_CODES[statusCode] ?? 'Error', message, statusCode, ...(code ? { code } : {}) };
}

export function sendError(reply: FastifyReply, statusCode: number, message: string, code?: string): FastifyReply {
  return reply.code(statusCode).send(errorBody(statusCode, message, code));
}

function describeError(err: unknown, bodyLimit: number): { status: number; message: string; code?: string } {
  if (err instanceof DevCloudError) return { status: err.statusCode, message: err.message, code: err.code };
  const e = err as { statusCode?: unknown; code?: unknown; message?: unknown };
  const code = typeof e.code === 'string' ? e.code : undefined;
  const message = typeof e.message === 'string' ? e.message : String(err);
  if (code?.startsWith('Z_')) {
    return { status: 400, message: `Content-Encoding gzip: the body is not valid gzip (${message})`, code: 'BAD_GZIP' };
  }
  if (code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
    return { status: 413, message: `the body is larger than the limit of ${bodyLimit} bytes (after decompression)`, code };
  }
  if (code === 'FST_ERR_CTP_INVALID_JSON_BODY') return { status: 400, message: 'the body is not valid JSON (Content-Type says application/json)', code };
  const status = typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 600 ? e.statusCode : 500;
  return { status, message, ...(code ? { code } : {}) };
}

/** JSON errors and a JSON 404 for an app; server faults are logged, client faults are not. */
export function installErrorHandling(app: FastifyInstance, bodyLimit: number): void {
  app.setErrorHandler((err: unknown, request: FastifyRequest, reply: FastifyReply) => {
    const { status, message, code } = describeError(err, bodyLimit);
    if (status >= 500) request.log.error({ err }, 'devcloud request failed');
    return sendError(reply, status, message, code);
  });
  app.setNotFoundHandler((request, reply) => sendError(reply, 404, `no route for ${request.method} ${request.url}`, 'NO_ROUTE'));
}

/**
 * Decompresses `Content-Encoding: gzip` bodies before fastify parses them. Fastify checks the
 * decompressed size against the body limit (a gzip bomb gets 413) and compares Content-Length
 * with `receivedEncodedLength`, which this keeps up to date.
 */
export function installGunzip(app: FastifyInstance): void {
  app.addHook('preParsing', async (request, _reply, payload) => {
    const encoding = (request.headers['content-encoding'] ?? 'identity').trim().toLowerCase();
    if (encoding === 'identity' || encoding === '') return payload;
    if (encoding !== 'gzip' && encoding !== 'x-gzip') {
      throw new DevCloudError(415, 'UNSUPPORTED_ENCODING', `Content-Encoding: expected gzip or identity, got ${JSON.stringify(encoding)}`);
    }
    const gunzip = createGunzip() as ReturnType<typeof createGunzip> & { receivedEncodedLength: number };
    gunzip.receivedEncodedLength = 0;
    payload.on('data', (chunk: Buffer) => {
      gunzip.receivedEncodedLength += chunk.length;
    });
    // Not pipeline(): on a gzip error it would destroy the request socket before the 400 goes out.
    payload.on('error', (err) => gunzip.destroy(err));
    return payload.pipe(gunzip) as Readable as typeof payload;
  });
}

export function formatUrl(host: string, port: number): string {
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
}
