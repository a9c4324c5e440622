// The launcher lives with the devcloud, so the chaos runner (which cannot import test/) shares it.
export * from '../../devcloud/spawn.js';
