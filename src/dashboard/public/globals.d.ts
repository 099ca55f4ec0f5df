// The browser globals of the UMD builds page.ts loads before the modules (for the type check of
// the page's JS: tsconfig.json beside this file).
declare global {
  const graphqlWs: typeof import("graphql-ws");
  /** uPlot's IIFE build; the page passes it plain option objects. */
  const uPlot: new (options: object, data: unknown[], target: HTMLElement) => { destroy(): void; setSize(size: { width: number; height: number }): void };
}
export {};
