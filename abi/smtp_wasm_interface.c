/*
 * smtp_wasm_interface.c - the six smtp_plugin_* exports over
 * smtp_plugin_get_interface(), for the WebAssembly build of a C plugin.
 *
 * The sandbox calls a module's six individual exports (abi/smtp_wasm.h); a C
 * plugin may instead export only the interface table (abi/smtp_plugin.h).
 * `smtp-server plugin build plugin.c --target wasm` compiles this file into
 * an archive and links it after the plugin, forcing the six names into the
 * exports: the archive member is linked only when the plugin leaves one of
 * them undefined. Its functions are weak, so a plugin's own definitions win;
 * a plugin with neither the table nor all six fails to link with
 * "undefined symbol: smtp_plugin_get_interface".
 *
 * Including smtp_wasm.h here makes every C plugin's wasm build check the
 * header's wasm32 layout assertions.
 */
#include "smtp_wasm.h"

#define SMTP_WASM_FORWARD __attribute__((weak)) SMTP_PLUGIN_EXPORT

/* NULL from smtp_plugin_get_interface: get_metadata returns NULL, which the
 * host refuses at load (SMTP_E_PLUGIN_METADATA), so the others are not reached
 * on a loaded plugin; they still answer an error rather than crash. */
SMTP_WASM_FORWARD int smtp_plugin_init(const smtp_allocator *host_allocator, const char *config_json) {
    const smtp_plugin_interface *table = smtp_plugin_get_interface();
    return table == NULL ? -1 : table->init(host_allocator, config_json);
}

SMTP_WASM_FORWARD void smtp_plugin_deinit(void) {
    const smtp_plugin_interface *table = smtp_plugin_get_interface();
    if (table != NULL) table->deinit();
}

SMTP_WASM_FORWARD const smtp_plugin_metadata *smtp_plugin_get_metadata(void) {
    const smtp_plugin_interface *table = smtp_plugin_get_interface();
    return table == NULL ? NULL : table->get_metadata();
}

SMTP_WASM_FORWARD int smtp_plugin_execute_hook(smtp_hook_context *context) {
    const smtp_plugin_interface *table = smtp_plugin_get_interface();
    return table == NULL ? -1 : table->execute_hook(context);
}

SMTP_WASM_FORWARD int smtp_plugin_enable(void) {
    const smtp_plugin_interface *table = smtp_plugin_get_interface();
    return table == NULL ? -1 : table->enable();
}

SMTP_WASM_FORWARD int smtp_plugin_disable(void) {
    const smtp_plugin_interface *table = smtp_plugin_get_interface();
    return table == NULL ? -1 : table->disable();
}
