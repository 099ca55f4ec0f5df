// CSV injection: free text a client or admin chose must not open as a spreadsheet formula.
import { describe, expect, it } from "vitest";
import { csvField, neutralizeFormula } from "../src/exports/index.ts";

describe("neutralizeFormula", () => {
  it("prefixes text that starts like a formula with a quote, and leaves everything else as it is", () => {
    for (const formula of ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\r=1"]) {
      expect(neutralizeFormula(formula)).toBe(`'${formula}`);
    }
    for (const plain of ["gpt-4o-mini", "a=b", "", "1.5", "invoice #1", "'already"]) expect(neutralizeFormula(plain)).toBe(plain);
  });
});

describe("csvField", () => {
  it("quotes (RFC 4180) only fields holding a comma, quote or line break, doubling quotes; NULL is empty", () => {
    expect(csvField(null)).toBe("");
    expect(csvField("")).toBe("");
    expect(csvField("gpt-4o-mini")).toBe("gpt-4o-mini");
    expect(csvField("a,b")).toBe('"a,b"');
    expect(csvField('say "hi"')).toBe('"say ""hi"""');
    expect(csvField("line\nbreak")).toBe('"line\nbreak"');
    expect(csvField("cr\rlf")).toBe('"cr\rlf"');
    expect(csvField(" padded ")).toBe(" padded ");
  });
});
