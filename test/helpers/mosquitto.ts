// The launcher lives with the devcloud, so the benchmark (which cannot import test/) shares it.
export * from '../../devcloud/mosquitto.js';
