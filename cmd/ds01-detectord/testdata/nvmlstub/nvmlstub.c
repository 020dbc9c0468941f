/*
 * A stand-in libnvidia-ml for the end-to-end utilisation test: one GPU,
 * whose processes and their SM utilisation come from the file named by
 * $DS01_NVML_STUB, read at every call. Each line is "PID MIB SM" (SM "-"
 * for a process NVML has no sample of). Only the calls ds01-detectord makes
 * are here; the daemon loads it with --nvml-library.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
enum { OK = 0, NOT_SUPPORTED = 3, INSUFFICIENT_SIZE = 7, NOT_FOUND = 6 };

typedef struct { unsigned int pid; unsigned long long usedGpuMemory; } procv1;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gi, ci; } procv3;
typedef struct { unsigned int pid; unsigned long long timeStamp; unsigned int sm, mem, enc, dec; } sample;
typedef struct { unsigned int gpu, memory; } utilization;
typedef struct { unsigned long long total, free, used; } memory;

struct proc { unsigned int pid; unsigned long long mib; int sm; };
static int the_gpu;

static int readprocs(struct proc *out, int max) {
	const char *path = getenv("DS01_NVML_STUB");
	FILE *f = path ? fopen(path, "r") : NULL;
	int n = 0;
	char sm[16];
	if (!f) return 0;
	while (n < max && fscanf(f, "%u %llu %15s", &out[n].pid, &out[n].mib, sm) == 3) {
		out[n].sm = strcmp(sm, "-") == 0 ? -1 : atoi(sm);
		n++;
	}
	fclose(f);
	return n;
}

nvmlReturn_t nvmlInit_v2(void) { return OK; }
nvmlReturn_t nvmlInit(void) { return OK; }
nvmlReturn_t nvmlShutdown(void) { return OK; }
const char *nvmlErrorString(nvmlReturn_t r) { return r == OK ? "Success" : "stub error"; }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *n) { *n = 1; return OK; }
nvmlReturn_t nvmlDeviceGetCount(unsigned int *n) { *n = 1; return OK; }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) { *d = &the_gpu; return OK; }
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int i, nvmlDevice_t *d) { *d = &the_gpu; return OK; }
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *buf, unsigned int len) {
	snprintf(buf, len, "GPU-57ab0000-0000-0000-0000-000000000000");
	return OK;
}
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *buf, unsigned int len) {
	snprintf(buf, len, "Stand-in GPU");
	return OK;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, memory *m) {
	struct proc p[64];
	int n = readprocs(p, 64);
	m->total = 80ULL << 30;
	m->used = 0;
	for (int i = 0; i < n; i++) m->used += p[i].mib << 20;
	m->free = m->total - m->used;
	return OK;
}
nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int *cur, unsigned int *pending) { return NOT_SUPPORTED; }

static nvmlReturn_t procs(unsigned int *count, void *infos, int v3) {
	struct proc p[64];
	int n = readprocs(p, 64);
	if (*count < (unsigned int)n) { *count = n; return INSUFFICIENT_SIZE; }
	for (int i = 0; i < n; i++) {
		if (v3) ((procv3 *)infos)[i] = (procv3){p[i].pid, p[i].mib << 20, 0xFFFFFFFF, 0xFFFFFFFF};
		else ((procv1 *)infos)[i] = (procv1){p[i].pid, p[i].mib << 20};
	}
	*count = n;
	return OK;
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t d, unsigned int *c, procv1 *p) { return procs(c, p, 0); }
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, procv3 *p) { return procs(c, p, 1); }
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t d, unsigned int *c, procv1 *p) { *c = 0; return OK; }
nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *c, procv3 *p) { *c = 0; return OK; }

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, utilization *u) {
	struct proc p[64];
	int n = readprocs(p, 64);
	u->gpu = 0;
	u->memory = 0;
	for (int i = 0; i < n; i++) if (p[i].sm > 0) u->gpu += p[i].sm;
	if (u->gpu > 100) u->gpu = 100;
	return OK;
}

/* One sample per process that has one, stamped just after lastSeen. */
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, sample *s, unsigned int *count, unsigned long long lastSeen) {
	struct proc p[64];
	int n = readprocs(p, 64), m = 0;
	for (int i = 0; i < n; i++) if (p[i].sm >= 0) m++;
	if (m == 0) return NOT_FOUND;
	if (s == NULL || *count < (unsigned int)m) { *count = m; return INSUFFICIENT_SIZE; }
	m = 0;
	for (int i = 0; i < n; i++)
		if (p[i].sm >= 0) s[m++] = (sample){p[i].pid, lastSeen + 1, (unsigned int)p[i].sm, 0, 0, 0};
	*count = m;
	return OK;
}
