/**
 * Watches an MQTT byte stream packet by packet, reading only the fixed headers: each packet's size
 * is known from its first 2-5 bytes, long before its body arrives. MQTT parsers (mqtt-packet, used
 * by aedes and mqtt.js) hold a packet whole until its last byte, whatever size it announces; this
 * lets a connection be closed as soon as a packet over the limit is announced, so the most a peer
 * can make the agent hold is the limit.
 */
export class MqttFrameScanner {
  /** Bytes of the current packet's body still to skip. */
  private remaining = 0;
  /** Where in the fixed header we are: 0 the type byte, 1-4 the length bytes. */
  private headerByte = 0;
  private length = 0;
  private multiplier = 1;

  constructor(private readonly maxPacketBytes: number) {}

  /**
   * Feeds the next bytes. Returns the size of the first packet over the limit (its total size on
   * the wire) or -1 for a malformed length; undefined while all is well.
   */
  feed(chunk: Uint8Array): number | undefined {
    let i = 0;
    while (i < chunk.length) {
      if (this.remaining > 0) {
        const skip = Math.min(this.remaining, chunk.length - i);
        this.remaining -= skip;
        i += skip;
        continue;
      }
      const b = chunk[i++]!;
      if (this.headerByte === 0) {
        this.headerByte = 1;
        this.length = 0;
        this.multiplier = 1;
        continue;
      }
      this.length += (b & 0x7f) * this.multiplier;
      this.multiplier *= 128;
      if (b & 0x80) {
        // The remaining length has at most 4 bytes (MQTT 3.1.1 2.2.3, 5.0 1.5.5).
        if (++this.headerByte > 4) return -1;
        continue;
      }
      const total = 1 + this.headerByte + this.length;
      if (total > this.maxPacketBytes) return total;
      this.remaining = this.length;
      this.headerByte = 0;
    }
    return undefined;
  }
}
