// Types of queries.js for the TypeScript side (the tests import the page's documents).
export declare const MONEY: string;
export declare const KEY_FIELDS: string;
export declare const RECEIPT_FIELDS: string;
export declare const FAILED_FIELDS: string;
export declare const OVERVIEW: string;
export declare const KEY_PAGE_SIZE: number;
export declare const KEYS_PAGE: string;
export declare const LIVE: Record<"spend" | "wallet" | "feed" | "channels" | "alerts", string>;
