import type { ImagesView } from '../api/image-routes.js';
import { errorMessage } from '../util/errors.js';
import { normalizeImage } from '../workloads/image-ref.js';
import { ImageImporter, ImportError, parseSha256 } from '../workloads/image-import.js';
import type { AgentParts } from './parts.js';

/**
 * Air-gapped updates (docs/workloads.md): the importer behind POST /v2/images/import, and the images
 * the target names (GET /v2/images). Temp files a killed import left are removed here, at start.
 */
export function buildImagesView(p: AgentParts): ImagesView {
  const { core, workloads, queueing } = p;
  const docker = workloads.runtimes.docker;
  const importer = new ImageImporter({
    dataDir: core.config.dataDir,
    maxBytes: core.config.workloads.maxImageImportBytes,
    minFreeBytes: core.config.settings.offline.minFreeDiskBytes,
    engine: () => docker.engineClient(),
    logger: core.logger.child({ part: 'image-import' }),
    random: core.random,
    imported: (r) => {
      workloads.reconciler.missing.arrived();
      queueing.events.record('image-imported', { images: r.loaded, sha256: r.sha256, bytes: r.bytes });
    },
  });
  importer.cleanStale();
  return {
    import: async (req) => {
      const sha256 = req.sha256 === undefined ? undefined : parseSha256(req.sha256, 'sha256');
      // The engine is asked before a byte is spooled: a device without one gets its 503 at once.
      const up = await docker.availability();
      if (!up.ok) throw new ImportError('IMAGE_IMPORT_ENGINE_DOWN', `the container engine does not answer: ${up.reason}`);
      return importer.import({ ...req, ...(sha256 !== undefined ? { sha256 } : {}) });
    },
    list: async () => {
      const wanted = new Map<string, string[]>();
      for (const [app, a] of Object.entries(workloads.targets.current()?.apps ?? {})) {
        for (const [service, s] of Object.entries(a.services)) {
          if (s.image === undefined || s.runtime === 'process') continue;
          const image = normalizeImage(s.image);
          wanted.set(image, [...(wanted.get(image) ?? []), `${app}/${service}`]);
        }
      }
      let held: { RepoTags?: string[] | null; Id: string; Size: number }[];
      try {
        held = await (await docker.engineClient()).listImages();
      } catch (err) {
        throw new ImportError('IMAGE_IMPORT_ENGINE_DOWN', `the container engine does not answer: ${errorMessage(err)}`);
      }
      const byTag = new Map(held.flatMap((i) => (i.RepoTags ?? []).map((t) => [t, i] as const)));
      const images = [...wanted].map(([image, services]) => {
        const i = byTag.get(image);
        return { image, services, present: i !== undefined, id: i?.Id ?? null, sizeBytes: i?.Size ?? null };
      });
      return { images, missing: workloads.reconciler.missing.current() };
    },
  };
}
