/*
 * STAND-IN for NVIDIA's libnvidia-ml.so.1, for tests of package internal/gpu only. It is NOT
 * NVIDIA's library and knows nothing about GPUs: it exports the few NVML functions package
 * gpu binds, with the signatures, struct layouts, constants and return codes that nvml.h
 * declares (as vendored by github.com/NVIDIA/go-nvml v0.13.4-1), and answers with fixed
 * values, so that the purego binding (argument passing, struct layout, the nvmlMemory_v2
 * version word) is exercised on machines without a GPU. Values are written to look like an A100 and an L4; nothing was recorded.
 *
 * The test compiles it with the system C compiler:
 *   cc -shared -fPIC -o libfake-nvml.so fake_nvml.c               (3 GPUs, GPU 2 is lost)
 *   cc -shared -fPIC -DFAIL_INIT -o ... fake_nvml.c               (nvmlInit_v2 fails)
 *   cc -shared -fPIC -DNO_MEMORY_V2 -o ... fake_nvml.c            (a driver before R510)
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
};

#define MiB (1024ULL * 1024ULL)

static struct fakeDevice devices[] = {
    {0, "GPU-2b7f6b1e-9c1d-4b7a-8f3e-5d2c1a0e9b47", "NVIDIA A100-SXM4-80GB", 81920 * MiB, 512 * MiB, 1024 * MiB, 37, 45},
    {1, "GPU-a1b2c3d4-0000-1111-2222-333344445555", "NVIDIA L4", 23034 * MiB, 256 * MiB, 0, -1, -1},
    {2, "GPU-lost", "NVIDIA L4", 0, 0, 0, -1, -1},
};

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
    return copy(version, length, "550.54.15");
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    *count = sizeof devices / sizeof devices[0];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialized) return NVML_ERROR_UNINITIALIZED;
    if (index >= sizeof devices / sizeof devices[0]) return NVML_ERROR_INVALID_ARGUMENT;
    if (index == 2) return NVML_ERROR_GPU_IS_LOST;
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

/* v1 counts the driver's reservation as used. */
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    memory->total = device->total;
    memory->used = device->reserved + device->used;
    memory->free = device->total - memory->used;
    return NVML_SUCCESS;
}

#ifndef NO_MEMORY_V2
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    memory->total = device->total;
    memory->reserved = device->reserved;
    memory->used = device->used;
    memory->free = device->total - device->reserved - device->used;
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
