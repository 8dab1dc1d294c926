import type { Plugin } from '../plugin/plugin.js';

/** How a plugin runs, as an operator names it (config.toml picks it per plugin). */
export type PluginMode = 'native' | 'isolated' | 'sandboxed' | 'component' | 'milter';

export function pluginMode(plugin: Plugin): PluginMode {
  switch (plugin.backend) {
    case 'native':
      return 'native';
    case 'process':
      return 'isolated';
    case 'wasm':
      return 'sandboxed';
    case 'component':
      return 'component';
    case 'milter':
      return 'milter';
  }
}
