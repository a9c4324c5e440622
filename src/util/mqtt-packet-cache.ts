/**
 * mqtt-packet (the packet writer of both mqtt.js and aedes, one copy in the process) builds a cache
 * of 65,536 two-byte Buffers at its first write, for packet ids and lengths: 6 MiB of heap, a
 * tenth of the idle agent's memory. Writing those numbers as needed cost no measurable CPU
 * (docs/performance.md, "Footprint"): the cache is turned off for the whole process before the
 * first packet is written. mqtt.js does the same for its clients when `writeCache` is false.
 */
export async function dropPacketNumberCache(): Promise<void> {
  const { default: mqttPacket } = await import('mqtt-packet');
  mqttPacket.writeToStream.cacheNumbers = false;
}
