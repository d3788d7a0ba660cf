/*
 * STAND-IN for NVIDIA's libnvidia-ml.so.1, for tests of package internal/gpu only. It is NOT
 * NVIDIA's library and knows nothing about GPUs: it exports the few NVML functions package
 * gpu binds, with the signatures, struct layouts, constants and return codes that nvml.h
 * declares (as vendored by github.com/NVIDIA/go-nvml v0.13.4-1), and answers with fixed
 * values, so that the purego binding (argument passing, struct layout, the nvmlMemory_v2
 * version word) is exercised on machines without a GPU.
 *
 * The default scenario's values are written by hand to look like an A100 and an L4; nothing
 * in it was recorded. The RECORDED_* scenarios answer with values recorded from a real H100
 * on driver 590.48.01: the numbers and strings that `nvidia-smi -q` printed there (NVIDIA's
 * tool reading NVML), copied from the captures of github.com/utkuozdemir/nvidia_gpu_exporter
 * (see NVML.md next to this file for the file, commit, section and line of each value). Only
 * those values are recorded: this code, the return codes it picks and every value not listed
 * in NVML.md are ours. nvidia-smi prints memory in whole MiB, so the byte counts here are
 * those MiB times 1048576; the bytes below a MiB were not recorded.
 *
 * The test compiles it with the system C compiler:
 *   cc -shared -fPIC -o libfake-nvml.so fake_nvml.c               (3 GPUs, GPU 2 is lost)
 *   cc -shared -fPIC -DFAIL_INIT -o ... fake_nvml.c               (nvmlInit_v2 fails)
 *   cc -shared -fPIC -DNO_MEMORY_V2 -o ... fake_nvml.c            (a driver before R510)
 *   cc -shared -fPIC -DRECORDED_H100 -o ... fake_nvml.c           (recorded: idle H100)
 *   cc -shared -fPIC -DRECORDED_H100_LOAD -o ... fake_nvml.c      (recorded: H100 under load)
 *   cc -shared -fPIC -DRECORDED_H100_MIG -o ... fake_nvml.c       (recorded: H100, MIG mode on)
 */
#include <stdio.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct fakeDevice *nvmlDevice_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
};

typedef struct nvmlMemory_st {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct nvmlMemory_v2_st {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

#define NVML_STRUCT_VERSION(data, ver) (unsigned int)(sizeof(nvml##data##_v##ver##_t) | (ver << 24U))
#define nvmlMemory_v2 NVML_STRUCT_VERSION(Memory, 2)

typedef struct nvmlUtilization_st {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

struct fakeDevice {
    unsigned int index;
    const char *uuid;
    const char *name;
    unsigned long long total, reserved, used;
    int utilization; /* -1: not supported */
    int temperature; /* -1: not supported */
    int lost;        /* nvmlDeviceGetHandleByIndex_v2 answers NVML_ERROR_GPU_IS_LOST */
    long long free;  /* -1: total - reserved - used; else the recorded value (see below) */
};

#define MiB (1024ULL * 1024ULL)

#if defined(RECORDED_H100) || defined(RECORDED_H100_LOAD) || defined(RECORDED_H100_MIG)
/*
 * RECORDED. One NVIDIA H100 80GB HBM3, driver 590.48.01, from the `nvidia-smi -q` sections
 * of utkuozdemir/nvidia_gpu_exporter internal/captures/, commit
 * c58c3331e071b131708d57aeb3199387dd5efe18 (NVML.md quotes each line):
 *   Driver Version   -> nvmlSystemGetDriverVersion
 *   Attached GPUs 1  -> nvmlDeviceGetCount_v2 (index 0: "GPU 0" of nvidia-smi -L)
 *   Product Name     -> nvmlDeviceGetName
 *   GPU UUID         -> nvmlDeviceGetUUID (the capture's mask, not the GPU's UUID)
 *   FB Memory Usage  -> nvmlDeviceGetMemoryInfo_v2: Total, Reserved, Used, Free (MiB there)
 *   Utilization GPU  -> nvmlDeviceGetUtilizationRates .gpu ("N/A" in MIG mode)
 *   GPU Current Temp -> nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU)
 * Free is kept as printed: nvidia-smi rounds each byte count to MiB on its own, so
 * Reserved + Used + Free is 81560 MiB in these captures, one more than Total (81559).
 */
static const char *driverVersion = "590.48.01";
static struct fakeDevice devices[] = {
#if defined(RECORDED_H100)
    /* linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt, "idle :: query (-q)", 08:12:38 */
    {0, "GPU-00000000-0000-0000-0000-000000000000", "NVIDIA H100 80GB HBM3", 81559 * MiB, 479 * MiB, 0 * MiB, 0, 41, 0, 81081 * MiB},
#elif defined(RECORDED_H100_LOAD)
    /* same file, "load :: query (-q)", 08:12:53 (gpu-burn and two memhog processes) */
    {0, "GPU-00000000-0000-0000-0000-000000000000", "NVIDIA H100 80GB HBM3", 81559 * MiB, 479 * MiB, 19818 * MiB, 100, 59, 0, 61263 * MiB},
#else
    /* linux-x86_64__nvidia-h100-mig__590.48.01.txt, "idle :: query (-q)", 09:00:27: MIG mode
     * Enabled, Utilization GPU "N/A". Which NVML return code stood behind that N/A was not
     * recorded; NOT_SUPPORTED is our pick (nvml.h says utilisation "is not currently
     * supported" on MIG-enabled GPUs without naming the code). The four MIG
     * devices the capture lists are not modelled: package gpu reads whole GPUs only. */
    {0, "GPU-00000000-0000-0000-0000-000000000000", "NVIDIA H100 80GB HBM3", 81559 * MiB, 479 * MiB, 59 * MiB, -1, 42, 0, 81022 * MiB},
#endif
};
#else
/* HAND-WRITTEN, not recorded. */
static const char *driverVersion = "550.54.15";
static struct fakeDevice devices[] = {
    {0, "GPU-2b7f6b1e-9c1d-4b7a-8f3e-5d2c1a0e9b47", "NVIDIA A100-SXM4-80GB", 81920 * MiB, 512 * MiB, 1024 * MiB, 37, 45, 0, -1},
    {1, "GPU-a1b2c3d4-0000-1111-2222-333344445555", "NVIDIA L4", 23034 * MiB, 256 * MiB, 0, -1, -1, 0, -1},
    {2, "GPU-lost", "NVIDIA L4", 0, 0, 0, -1, -1, 1, -1},
};
#endif

static unsigned long long freeOf(const struct fakeDevice *d) {
    if (d->free >= 0) return (unsigned long long)d->free;
    return d->total - d->reserved - d->used;
}

static int initialized;

nvmlReturn_t nvmlInit_v2(void) {
#ifdef FAIL_INIT
    return NVML_ERROR_DRIVER_NOT_LOADED;
#else
    initialized++;
    return NVML_SUCCESS;
#endif
}

nvmlReturn_t nvmlShutdown(void) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    initialized--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy(char *dst, unsigned int size, const char *src) {
    if (dst == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > size) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    return copy(version, length, driverVersion);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    *count = sizeof devices / sizeof devices[0];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (index >= sizeof devices / sizeof devices[0]) return NVML_ERROR_INVALID_ARGUMENT;
    if (devices[index].lost) return NVML_ERROR_GPU_IS_LOST;
    *device = &devices[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    *index = device->index;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    return copy(uuid, length, device->uuid);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    return copy(name, length, device->name);
}

/* v1 counts the driver's reservation as used (derived here, never recorded). */
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    memory->total = device->total;
    memory->used = device->reserved + device->used;
    memory->free = freeOf(device);
    return NVML_SUCCESS;
}

#ifndef NO_MEMORY_V2
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = device->total;
    memory->reserved = device->reserved;
    memory->used = device->used;
    memory->free = freeOf(device);
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    if (device->utilization < 0) return NVML_ERROR_NOT_SUPPORTED;
    utilization->gpu = (unsigned int)device->utilization;
    utilization->memory = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensorType, unsigned int *temp) {
    if (sensorType != 0) return NVML_ERROR_INVALID_ARGUMENT; /* NVML_TEMPERATURE_GPU */
    if (device->temperature < 0) return NVML_ERROR_NOT_SUPPORTED;
    *temp = (unsigned int)device->temperature;
    return NVML_SUCCESS;
}
