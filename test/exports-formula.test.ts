// CSV injection: free text a client or admin chose must not open as a spreadsheet formula.
import { describe, expect, it } from "vitest";
import { neutralizeFormula } from "../src/exports/index.ts";

describe("neutralizeFormula", () => {
  it("prefixes text that starts like a formula with a quote, and leaves everything else as it is", () => {
    for (const formula of ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\r=1"]) {
      expect(neutralizeFormula(formula)).toBe(`'${formula}`);
    }
    for (const plain of ["gpt-4o-mini", "a=b", "", "1.5", "invoice #1", "'already"]) expect(neutralizeFormula(plain)).toBe(plain);
  });
});
