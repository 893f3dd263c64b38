import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The bundle is embedded in the aidos binary (crates/scheduler/src/dashboard.rs) and committed: keep the output
// deterministic (no timestamps, stable chunk names from content hashes).
export default defineConfig({
  plugins: [react()],
  base: "/",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 1024 },
  server: { proxy: { "/v1": "http://127.0.0.1:7080" } },
});
