import { defineConfig } from "vite";

// Relative asset URLs: the built site works wherever it is served from (a preview proxy's
// host root or a sub-path). prompt.json lives in public/ and is copied to dist/ as is.
export default defineConfig({
  base: "./",
  build: { outDir: "dist", emptyOutDir: true },
});
