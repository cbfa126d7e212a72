/*
 * sim_mem.h - host-memory backing for the simulated vendor runtimes (fake libcuda, libascendcl,
 * libamdhip64, libcnrt).
 *
 * A "device" allocation is host memory with a 64-byte header in front that records its size and
 * device, so frees need no lookup table. Allocations of 1 MiB and more are mmap'ed with
 * MAP_NORESERVE (an 80 GiB simulated card costs nothing until touched); smaller ones use malloc.
 * Each device's capacity is the profile's memory_bytes minus memory_used_bytes; an allocation that
 * would exceed it fails (the caller returns its vendor's out-of-memory code). Usage is per process:
 * the simulated "card" is not shared between processes.
 */
#ifndef HCS_SIM_MEM_H
#define HCS_SIM_MEM_H

#include <stddef.h>
#include <stdint.h>

#include "sim_profile.h"

enum sim_mem_rc { SIM_MEM_OK = 0, SIM_MEM_OOM = 1, SIM_MEM_BADDEV = 2, SIM_MEM_NOPROFILE = 3,
                  SIM_MEM_BADPTR = 4, SIM_MEM_HOSTOOM = 5, SIM_MEM_BADVAL = 6 };

/* Load the profile (once per process, then cached). Returns SIM_MEM_OK or SIM_MEM_NOPROFILE (message already on stderr). */
int sim_mem_profile(const sim_profile_t **p);
/* Number of devices of the vendor, or -1 when the profile cannot be loaded. */
int sim_mem_count(sim_vendor_t vendor);
/* Allocate size bytes on device dev of vendor; counted == 0 for host memory (not charged). */
int sim_mem_alloc(sim_vendor_t vendor, int dev, size_t size, int counted, void **out);
/* Free a pointer returned by sim_mem_alloc (NULL is a no-op). */
int sim_mem_free(void *ptr);
/* Size of an allocation, or 0 if ptr is not one. */
size_t sim_mem_size(const void *ptr);
/* free/total as the vendor reports them for the device. */
int sim_mem_info(sim_vendor_t vendor, int dev, size_t *free_b, size_t *total_b);

/*
 * Re-mapping devices (a process restored from a checkpoint onto other devices, docs/checkpoint.md): from
 * now on the process runs on `profile` (the new node's, it replaces the cached one), and what it has
 * charged to device k of `vendor` is charged to old_to_new[k] (k < n; -1 or beyond n: stays). Blocks and
 * handles allocated before are given back to the device they moved to. At most SIM_REMAP_GENS - 1 moves
 * per process (then SIM_MEM_BADDEV and nothing changes). Not for the hot path: it takes a lock.
 */
#define SIM_REMAP_GENS 8
int sim_mem_remap(sim_vendor_t vendor, const int *old_to_new, int n, const sim_profile_t *profile);
/* The current re-mapping generation, and where a charge made on dev in generation gen is now. */
int sim_mem_generation(void);
int sim_mem_current_dev(sim_vendor_t vendor, int gen, int dev);

/* Charge / give back device capacity without a host block (pools, VMM physical handles). */
int sim_mem_charge(sim_vendor_t vendor, int dev, uint64_t size);
void sim_mem_uncharge(sim_vendor_t vendor, int dev, uint64_t size);
/* Like sim_mem_alloc, recording an owner (e.g. the pool) that sim_mem_owner returns. */
int sim_mem_alloc_owned(sim_vendor_t vendor, int dev, size_t size, int counted, void *owner, void **out);
void *sim_mem_owner(const void *ptr);

/*
 * Virtual memory management shared by the CUDA (cuMemCreate/cuMemMap...), HIP (hipMemCreate...) and
 * ACL (aclrtMallocPhysical/aclrtMapMem...) simulations, with the vendors' semantics:
 *  - physical allocations are handles; sizes must be multiples of SIM_VMM_GRANULE (what
 *    cuMemGetAllocationGranularity & co. report); device-located ones are charged to the card;
 *  - address reservations are address space only (PROT_NONE, charged nothing);
 *  - a handle's memory is freed when it has been released AND every mapping of it is unmapped
 *    (cuMemRelease on a mapped handle only drops the handle's reference).
 */
#define SIM_VMM_GRANULE ((size_t)2 << 20)
int sim_vmm_create(sim_vendor_t vendor, int dev, size_t size, int counted, void **handle);
int sim_vmm_release(void *handle);
int sim_vmm_reserve(size_t size, size_t alignment, void **va);
int sim_vmm_free_va(void *va, size_t size);
int sim_vmm_map(void *va, size_t size, size_t offset, void *handle);
/* size == 0: the one mapping that starts at va (ACL's aclrtUnmapMem) */
int sim_vmm_unmap(void *va, size_t size);
int sim_vmm_check_mapped(const void *va, size_t size);
/* the handle mapped at va, with a new reference (cuMemRetainAllocationHandle) */
int sim_vmm_retain(const void *va, void **handle);

#endif
