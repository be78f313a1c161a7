// Types of preview-client.js (the same file the service serves at /static/preview-client.js).

export declare const STEPS: readonly string[];
export declare const TERMINAL_STATUSES: readonly string[];
/** What a stopped preview's page posts to the embedding page to ask for a restart. */
export declare const RESTART_MESSAGE: "midori-preview:restart";

export type MaybePromise<T> = T | Promise<T>;

export interface ClientOptions {
  /** The service's origin, e.g. "https://preview.example.com" (default: the page's own). */
  baseUrl?: string;
  /** A bearer token, or a function returning the current one (called before every request). */
  token?: string | (() => MaybePromise<string | null | undefined>);
  /** Extra headers on every request (e.g. `{"X-User-Id": "demo-user"}` in dev mode). */
  headers?: Record<string, string> | (() => Record<string, string>);
  credentials?: RequestCredentials;
  fetch?: typeof fetch;
}

export interface FileSource {
  path: string;
  content: string;
  encoding?: "utf-8" | "base64";
}

export interface CreateBody {
  projectId: string;
  promptJson?: Record<string, unknown>;
  template?: "static" | "vite";
  files?: FileSource[];
  git?: { url: string; ref?: string };
  install?: string;
  build?: string;
  start?: string;
  port?: number;
  replace?: boolean;
}

/** A running preview's new source: the shapes of a create's source, plus `deletions`. */
export interface UpdateBody {
  promptJson?: Record<string, unknown>;
  template?: "static" | "vite";
  files?: FileSource[];
  deletions?: string[];
  install?: string;
  build?: string;
  start?: string;
  port?: number;
}

export interface Created {
  sandboxId: string;
  projectId: string;
  status: string;
  statusUrl: string;
  eventsUrl: string;
  heartbeatIntervalSeconds: number;
}

export interface Usage {
  usedSecondsToday: number;
  remainingSecondsToday: number;
  warning: "quota_low" | null;
  day: string;
  resetAt: string;
}

export interface StepError {
  step: string;
  code?: string;
  message: string;
  exitCode: number | null;
}

export interface PreviewStatus {
  sandboxId: string;
  projectId: string;
  status: string;
  reason: string | null;
  previewUrl: string | null;
  previewToken: string | null;
  openUrl: string | null;
  createdAt: string;
  readyAt: string | null;
  lastHeartbeatAt: string | null;
  expiresAt: string;
  error: StepError | null;
  logsTail: string[];
  usage: Usage | null;
  /** Which version of its source the preview serves (1: as created). */
  version: number;
  /** When that version went live (null: never updated). */
  updatedAt: string | null;
}

export interface SourceUpdated {
  sandboxId: string;
  version: number;
  updatedAt: string | null;
  /** False: the preview already served this source. */
  changed: boolean;
  /** A newer update came meanwhile and won (its version is the one given). */
  superseded: boolean;
  uploaded: string[];
  deleted: string[];
  rebuilt: boolean;
}

export interface HeartbeatResult {
  sandboxId: string;
  status: string;
  nextHeartbeatSeconds: number;
  usage: Usage | null;
}

export interface PreviewEvent {
  type: "status" | "log" | "updated" | "update_failed" | string;
  data: any;
  id: string | null;
}

export declare class PreviewApiError extends Error {
  constructor(status: number, code: string, message: string, details?: Record<string, any>);
  status: number;
  code: string;
  details: Record<string, any>;
}

export declare function explainError(err: unknown): { title: string; advice: string };
export declare function stoppedMessage(reason: string | null | undefined): string;
export declare function parseEventStream(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<{ event: string; data: string; id: string | null; retry: number | null }>;

export interface Subscription {
  close(): void;
  done: Promise<void>;
}

export interface KeepAlive {
  stop(): void;
  beatNow(): Promise<void>;
  readonly paused: boolean;
  readonly intervalSeconds: number;
}

export declare class PreviewClient {
  constructor(options?: ClientOptions);
  request(
    method: string,
    path: string,
    init?: { body?: unknown; headers?: Record<string, string>; signal?: AbortSignal },
  ): Promise<any>;
  startPreview(
    body: CreateBody,
    options?: { idempotencyKey?: string; signal?: AbortSignal },
  ): Promise<Created>;
  /** Update a running preview in place (same sandbox and links, a new `version`). */
  update(
    sandboxId: string,
    source: UpdateBody,
    options?: { signal?: AbortSignal },
  ): Promise<SourceUpdated>;
  restart(sandboxId: string): Promise<Created>;
  handleRestarts(handlers: {
    onRestart: (created: Created, previousId: string) => void;
    onRestarting?: (previousId: string) => void;
    onError?: (err: unknown) => void;
    accept?: (event: MessageEvent) => boolean;
  }): { stop(): void };
  getStatus(sandboxId: string): Promise<PreviewStatus>;
  stop(sandboxId: string): Promise<PreviewStatus>;
  stopOnUnload(sandboxId: string): void;
  heartbeat(sandboxId: string, visible?: boolean): Promise<HeartbeatResult>;
  getUsage(): Promise<Usage>;
  subscribe(
    sandboxId: string,
    onEvent: (event: PreviewEvent) => void,
    options?: {
      onError?: (err: unknown, info: { willRetry: boolean }) => void;
      onOpen?: () => void;
      lastEventId?: string;
      maxRetryMs?: number;
      transport?: "fetch" | "eventsource";
    },
  ): Subscription;
  keepAlive(
    sandboxId: string,
    options?: {
      intervalSeconds?: number;
      onBeat?: (beat: HeartbeatResult & { visible: boolean; at: Date }) => void;
      onQuotaLow?: (usage: Usage) => void;
      onStopped?: (info: { reason: string | null; code: string; message: string }) => void;
      onPause?: () => void;
      onResume?: () => void;
      onError?: (err: unknown) => void;
      stopOnPageHide?: boolean;
    },
  ): KeepAlive;
}

export declare function createPreviewClient(options?: ClientOptions): PreviewClient;
