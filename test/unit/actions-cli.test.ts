import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { actionRequest, runAction, ACTION_EXIT } from '../../src/actions-cli.js';
import { AgentApi } from '../../src/cli-client.js';

function sink(): { stream: Writable; text: () => string } {
  let text = '';
  return {
    stream: new Writable({
      write(c: Buffer, _e, cb) {
        text += c.toString();
        cb();
      },
    }),
    text: () => text,
  };
}

describe('actions CLI', () => {
  it('maps each command to its route', () => {
    expect(actionRequest('restart', 'edge')).toEqual({ path: '/v2/apps/edge/restart', body: {} });
    expect(actionRequest('restart', 'edge/ticker')).toEqual({ path: '/v2/apps/edge/services/ticker/restart', body: {} });
    expect(actionRequest('purge', 'edge', 'edge')).toEqual({ path: '/v2/apps/edge/purge', body: { confirm: 'edge' } });
    expect(actionRequest('reboot', undefined)).toEqual({ path: '/v2/device/reboot', body: {} });
    expect(actionRequest('restart', 'a/b/c')).toBe('restart: expected APP or APP/SERVICE, got "a/b/c"');
    expect(actionRequest('purge', 'a/b')).toBe('purge: expected APP, got "a/b"');
  });

  it('purge without a terminal and without --yes is a usage error, and nothing is sent', async () => {
    const err = sink();
    // Nothing listens there: a request sent would fail with exit 1, not 2.
    const api = new AgentApi({ base: 'http://127.0.0.1:9', key: 'k', keyFrom: '--key' }, 1_000);
    const code = await runAction(api, 'purge', 'edge', {}, { out: sink().stream, err: err.stream, ask: undefined });
    expect(code).toBe(ACTION_EXIT.usage);
    expect(err.text()).toContain('give --yes --confirm APP');
  });
});
