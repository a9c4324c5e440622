// A Stryker reporter that writes each surviving (or uncovered) mutant to reports/mutation/<area>.survivors.txt
// as soon as it is known, so that tests can be written while a long run goes on.
import { appendFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { PluginKind, declareClassPlugin } from '@stryker-mutator/api/plugin';

class SurvivorsReporter {
  constructor() {
    this.file = `reports/mutation/${process.env.MUTATION_AREA ?? 'all'}.survivors.txt`;
    mkdirSync('reports/mutation', { recursive: true });
    writeFileSync(this.file, '');
  }

  onMutantTested(m) {
    if (m.status !== 'Survived' && m.status !== 'NoCoverage') return;
    const at = `${m.fileName}:${m.location.start.line}:${m.location.start.column + 1}`;
    appendFileSync(this.file, `${m.status} ${at} ${m.mutatorName}: ${JSON.stringify(m.replacement ?? '')}\n`);
  }
}

export const strykerPlugins = [declareClassPlugin(PluginKind.Reporter, 'survivors', SurvivorsReporter)];
